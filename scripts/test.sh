#!/usr/bin/env bash
# Run the whole mmsidecar test suite against a real MinIO, then the
# engine-neutral suites again against a real SeaweedFS.
#
#   scripts/test.sh                           # go test -race ./...
#   scripts/test.sh -run Contract ./store/... # extra args go to `go test`
#
# Works as root on a fresh Debian 12 with Go at /usr/local/go, and is safe
# to run again: it installs only what is missing (Debian packages, the
# pinned MinIO and SeaweedFS builds under ~/.cache/mmsidecar/bin), starts
# one MinIO on a random 127.0.0.1 port with a throw-away data directory,
# runs the tests with the environment the suites read, then starts one
# SeaweedFS (`weed server` with a filer and an S3 gateway) and runs the
# store contract, the safety probe, `mmsidecar check` and the runner's
# integration test against it (on a whole run, or with
# MMSIDECAR_TEST_SEAWEEDFS=1). It always stops both servers.
set -euo pipefail

MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
CACHE_BIN="${HOME}/.cache/mmsidecar/bin"
MINIO_BIN="${CACHE_BIN}/minio"
# The pinned SeaweedFS (issue 24): a version with conditional DELETE
# (seaweedfs#8802). Its go.mod has replace directives, so `go install`
# refuses it: install_weed builds ./weed inside a copy of the module.
WEED_MODULE=github.com/seaweedfs/seaweedfs
WEED_VERSION=v0.0.0-20261109003541-7506e5f91cd6
WEED_BIN="${CACHE_BIN}/weed"
LOG_FILE="${HOME}/.cache/mmsidecar/last-test.log"
E2E_REPORT="${HOME}/.cache/mmsidecar/last-e2e-report.txt"
# The end-to-end test (./e2e, build tag e2e) writes its scenario table
# here; the summary prints it (go test hides passing tests' output).
# Debian packages the suites need: mailman3 for the real-Mailman tests,
# python3-pytest for the Mailman plugin's tests (deploy/mailman), podman
# and runc to build and run the container image (deploy/deploytest;
# podman 4.3.1, runc as the OCI runtime), chromium for the cluster page's
# test (headless), the rest for TLS roots, process and socket inspection.
DEB_PACKAGES=(mailman3 python3-pytest podman runc chromium ca-certificates curl file iproute2 procps util-linux)
# Files tests leave for people to look at (the cluster page's screenshot).
ARTIFACTS_DIR="${HOME}/.cache/mmsidecar/artifacts"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:${PATH}"

TMP_DIR=""
MINIO_PID=""
WEED_PID=""
POLICY_RC_CREATED=""

log() { printf '[test.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cleanup() {
	local rc=$?
	if [[ -n "${MINIO_PID}" ]] && kill -0 "${MINIO_PID}" 2>/dev/null; then
		log "stopping MinIO (pid ${MINIO_PID})"
		kill -TERM "${MINIO_PID}" 2>/dev/null || true
		for _ in $(seq 1 100); do
			kill -0 "${MINIO_PID}" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "${MINIO_PID}" 2>/dev/null || true
		wait "${MINIO_PID}" 2>/dev/null || true
	fi
	if [[ -n "${WEED_PID}" ]] && kill -0 "${WEED_PID}" 2>/dev/null; then
		log "stopping SeaweedFS (pid ${WEED_PID})"
		kill -KILL "${WEED_PID}" 2>/dev/null || true
		wait "${WEED_PID}" 2>/dev/null || true
	fi
	if [[ -n "${TMP_DIR}" ]]; then
		rm -rf "${TMP_DIR}"
	fi
	if [[ -n "${POLICY_RC_CREATED}" ]]; then
		rm -f /usr/sbin/policy-rc.d
	fi
	exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() {
	if [[ "$(id -u)" -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root to run: $*"
	fi
}

# install_packages installs the Debian packages that are missing, keeping
# Debian's own Mailman service from starting.
install_packages() {
	local missing=() pkg
	for pkg in "${DEB_PACKAGES[@]}"; do
		if ! dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("${pkg}")
		fi
	done
	if [[ ${#missing[@]} -eq 0 ]]; then
		log "Debian packages: all present"
		return
	fi
	log "installing Debian packages: ${missing[*]}"
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\n# written by mmsidecar scripts/test.sh: start no services\nexit 101\n' |
			as_root tee /usr/sbin/policy-rc.d >/dev/null
		as_root chmod 0755 /usr/sbin/policy-rc.d
		POLICY_RC_CREATED=1
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
	if [[ -n "${POLICY_RC_CREATED}" ]]; then
		as_root rm -f /usr/sbin/policy-rc.d
		POLICY_RC_CREATED=""
	fi
}

# install_minio builds the pinned MinIO unless the cached binary already is
# that version (go version -m reads the module version built into it).
install_minio() {
	if [[ -x "${MINIO_BIN}" ]] &&
		go version -m "${MINIO_BIN}" 2>/dev/null | grep -qE "^[[:space:]]+mod[[:space:]]+${MINIO_MODULE}[[:space:]]+${MINIO_VERSION}([[:space:]]|$)"; then
		log "MinIO ${MINIO_VERSION}: cached at ${MINIO_BIN}"
		return
	fi
	log "building MinIO ${MINIO_VERSION} into ${CACHE_BIN} (takes several minutes)"
	mkdir -p "${CACHE_BIN}"
	(cd / && GOBIN="${CACHE_BIN}" GOFLAGS= go install "${MINIO_MODULE}@${MINIO_VERSION}")
	printf '%s@%s\n' "${MINIO_MODULE}" "${MINIO_VERSION}" >"${CACHE_BIN}/minio.version"
}

# install_weed builds the pinned SeaweedFS server unless the cached binary
# is that version (weed.version beside it, written after a good build):
# the module from the Go module proxy, copied to a writable directory
# (the module cache is read-only), `go build ./weed` there. About 7
# minutes of CPU, once per machine.
install_weed() {
	local want="${WEED_MODULE}@${WEED_VERSION}"
	if [[ -x "${WEED_BIN}" && "$(cat "${WEED_BIN}.version" 2>/dev/null)" == "${want}" ]]; then
		log "SeaweedFS ${WEED_VERSION}: cached at ${WEED_BIN}"
		return
	fi
	log "building SeaweedFS ${WEED_VERSION} into ${CACHE_BIN} (takes several minutes)"
	mkdir -p "${CACHE_BIN}"
	local src build
	src="$(cd / && GOFLAGS= go mod download -json "${want}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -n "${src}" && -f "${src}/go.mod" ]] || die "go mod download ${want}: no module directory"
	build="$(mktemp -d /tmp/mmsidecar-weed-build.XXXXXX)"
	cp -R "${src}/." "${build}/"
	chmod -R u+w "${build}"
	if ! (cd "${build}" && GOFLAGS=-buildvcs=false go build -o "${WEED_BIN}.new" ./weed); then
		rm -rf "${build}" "${WEED_BIN}.new"
		die "go build ./weed of ${want} failed"
	fi
	rm -rf "${build}"
	mv -f "${WEED_BIN}.new" "${WEED_BIN}"
	printf '%s\n' "${want}" >"${WEED_BIN}.version"
}

# free_port prints a 127.0.0.1 TCP port nothing listens on.
free_port() {
	local port
	for _ in $(seq 1 50); do
		port=$((20000 + RANDOM % 40000))
		if ! ss -Htln "sport = :${port}" | grep -q .; then
			echo "${port}"
			return
		fi
	done
	die "no free TCP port found"
}

# start_minio starts one MinIO for the whole run and waits until it serves.
start_minio() {
	TMP_DIR="$(mktemp -d /tmp/mmsidecar-test.XXXXXX)"
	MINIO_ACCESS_KEY=mmsidecar
	MINIO_SECRET_KEY="test-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
	local attempt port status
	for attempt in 1 2 3; do
		port="$(free_port)"
		MINIO_ENDPOINT="127.0.0.1:${port}"
		env -u MINIO_VOLUMES -u MINIO_OPTS \
			MINIO_ROOT_USER="${MINIO_ACCESS_KEY}" MINIO_ROOT_PASSWORD="${MINIO_SECRET_KEY}" \
			MINIO_BROWSER=off MINIO_UPDATE=off \
			"${MINIO_BIN}" server --quiet --address "${MINIO_ENDPOINT}" \
			--certs-dir "${TMP_DIR}/certs" "${TMP_DIR}/data" >>"${TMP_DIR}/minio.log" 2>&1 &
		MINIO_PID=$!
		for _ in $(seq 1 600); do
			if ! kill -0 "${MINIO_PID}" 2>/dev/null; then
				break
			fi
			status="$(curl -s -o /dev/null -D - --max-time 2 "http://${MINIO_ENDPOINT}/minio/health/live" 2>/dev/null || true)"
			if grep -q '^HTTP/[0-9.]* 200' <<<"${status}" && ! grep -qi '^x-minio-server-status: offline' <<<"${status}"; then
				log "MinIO serving at ${MINIO_ENDPOINT} (pid ${MINIO_PID}, data ${TMP_DIR})"
				return
			fi
			sleep 0.1
		done
		kill -KILL "${MINIO_PID}" 2>/dev/null || true
		wait "${MINIO_PID}" 2>/dev/null || true
		MINIO_PID=""
		log "MinIO attempt ${attempt} on port ${port} failed"
	done
	tail -n 40 "${TMP_DIR}/minio.log" >&2 || true
	die "MinIO did not start (log above)"
}

# weed_port prints a 127.0.0.1 port below 55535 that is free together
# with port + 10000: every weed server also listens there for gRPC (and
# crashes at start when that is above 65535). Both stay below the
# kernel's ephemeral range, where an outgoing connection could take one.
weed_port() {
	local port first hi=55535
	read -r first _ </proc/sys/net/ipv4/ip_local_port_range || first=0
	if ((first - 10000 > 11000)); then
		hi=$((first - 10000))
	fi
	for _ in $(seq 1 50); do
		port=$((10000 + RANDOM % (hi - 10000)))
		if ! ss -Htln "sport = :${port}" | grep -q . && ! ss -Htln "sport = :$((port + 10000))" | grep -q .; then
			echo "${port}"
			return
		fi
	done
	die "no free TCP port pair found"
}

# start_seaweedfs starts one `weed server` with a filer and an S3 gateway
# (the settings of storetest.StartSeaweedFS) and waits until the gateway
# answers a signed ListBuckets. New buckets still refuse writes ("No
# writable volumes") until their volumes have grown: the suites wait for
# a first write on every bucket they create.
start_seaweedfs() {
	WEED_ACCESS_KEY=mmsidecar
	WEED_SECRET_KEY="test-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
	local dir="${TMP_DIR}/seaweedfs" attempt p_master p_volume p_filer p_s3
	mkdir -p "${dir}/data"
	printf '{"identities":[{"name":"mmsidecar","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","List","Tagging","Write"]}]}\n' \
		"${WEED_ACCESS_KEY}" "${WEED_SECRET_KEY}" >"${dir}/s3.json"
	for attempt in 1 2 3; do
		p_master="$(weed_port)" p_volume="$(weed_port)" p_filer="$(weed_port)" p_s3="$(weed_port)"
		WEED_ENDPOINT="127.0.0.1:${p_s3}"
		(cd "${dir}" && exec "${WEED_BIN}" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="${dir}/data" \
			-master.port="${p_master}" -master.peers=none -master.telemetry=false -master.volumeSizeLimitMB=100 \
			-volume.port="${p_volume}" -volume.max=0 -volume.preStopSeconds=0 \
			-filer -filer.port="${p_filer}" \
			-s3 -s3.port="${p_s3}" -s3.config="${dir}/s3.json" -s3.port.iceberg=0 -s3.port.lance=0) \
			>>"${dir}/weed.log" 2>&1 &
		WEED_PID=$!
		for _ in $(seq 1 600); do
			if ! kill -0 "${WEED_PID}" 2>/dev/null; then
				break
			fi
			if curl -sf -o /dev/null --max-time 2 --aws-sigv4 "aws:amz:us-east-1:s3" \
				--user "${WEED_ACCESS_KEY}:${WEED_SECRET_KEY}" "http://${WEED_ENDPOINT}/"; then
				log "SeaweedFS serving at ${WEED_ENDPOINT} (pid ${WEED_PID}, data ${dir})"
				return
			fi
			sleep 0.1
		done
		kill -KILL "${WEED_PID}" 2>/dev/null || true
		wait "${WEED_PID}" 2>/dev/null || true
		WEED_PID=""
		log "SeaweedFS attempt ${attempt} failed"
	done
	tail -n 40 "${dir}/weed.log" >&2 || true
	die "SeaweedFS did not start (log above)"
}

# The engine-neutral suites: what scripts/test.sh runs again against
# SeaweedFS. Each reads its endpoint from MMSIDECAR_TEST_S3_*.
S3_SUITES='^(TestContract|TestS3EndpointIsSafe|TestCheckS3Endpoint|TestIssue2MirrorUnderLoad)$'
S3_SUITE_PACKAGES=(./store/s3store ./store/probe ./cmd/mmsidecar ./runner)

# split_args sets GO_TEST_ARGS to the arguments, adding ./... when none of
# them names packages, and PKG_ARGS to the package patterns alone.
split_args() {
	GO_TEST_ARGS=("$@")
	PKG_ARGS=()
	local a
	for a in "$@"; do
		if [[ "${a}" == . || "${a}" == ./* || "${a}" == ../* || "${a}" == github.com/mmsidecar/* ]]; then
			PKG_ARGS+=("${a}")
		fi
	done
	if [[ ${#PKG_ARGS[@]} -eq 0 ]]; then
		PKG_ARGS=(./...)
		GO_TEST_ARGS+=(./...)
	fi
}

main() {
	local started=$SECONDS
	command -v go >/dev/null || die "go not found (expected /usr/local/go/bin/go)"
	cd "${REPO_ROOT}"
	install_packages
	install_minio
	install_weed
	start_minio

	export MMSIDECAR_MINIO_BIN="${MINIO_BIN}"
	export MMSIDECAR_WEED_BIN="${WEED_BIN}"
	export MMSIDECAR_TEST_MINIO=require
	# The MinIO: for the tests of MinIO itself (storetest.Shared) ...
	export MMSIDECAR_TEST_MINIO_ENDPOINT="${MINIO_ENDPOINT}"
	export MMSIDECAR_TEST_MINIO_ACCESS_KEY="${MINIO_ACCESS_KEY}"
	export MMSIDECAR_TEST_MINIO_SECRET_KEY="${MINIO_SECRET_KEY}"
	# ... and, in the first pass, for the engine-neutral suites
	# (storetest.SharedS3); the second pass points these at SeaweedFS.
	export MMSIDECAR_TEST_S3_NAME=minio
	export MMSIDECAR_TEST_S3_ENDPOINT="${MINIO_ENDPOINT}"
	export MMSIDECAR_TEST_S3_ACCESS_KEY="${MINIO_ACCESS_KEY}"
	export MMSIDECAR_TEST_S3_SECRET_KEY="${MINIO_SECRET_KEY}"
	export MMSIDECAR_E2E="${MMSIDECAR_E2E:-1}"
	# The multi-process chaos suite (issue 3): about 6 minutes.
	export MMSIDECAR_CHAOS="${MMSIDECAR_CHAOS:-1}"
	# The chaos scenarios on a 4-server TLS MinIO cluster (issue 8), in
	# their short form (1.5 to 4 minutes): full runs the 2,000-message
	# form, off skips them (loudly).
	export MMSIDECAR_CHAOS_CLUSTER="${MMSIDECAR_CHAOS_CLUSTER:-short}"
	# The chaos scenarios on a distributed SeaweedFS (issue 24), short
	# form: full runs the 2,000-message form, off skips them (loudly).
	export MMSIDECAR_CHAOS_SEAWEEDFS="${MMSIDECAR_CHAOS_SEAWEEDFS:-short}"
	export MMSIDECAR_E2E_REPORT="${E2E_REPORT}"
	export MMSIDECAR_TEST_ARTIFACTS="${ARTIFACTS_DIR}"

	split_args "$@"
	mkdir -p "$(dirname "${LOG_FILE}")" "${ARTIFACTS_DIR}"
	rm -f "${E2E_REPORT}" "${ARTIFACTS_DIR}"/*
	# Compile every test binary first, in parallel; then run the packages
	# one at a time (-p 1): the real-MinIO, chaos and Mailman suites measure
	# timing and must not compete with each other for two cores.
	log "go test -race -tags e2e -run ^\$ (compile) ${PKG_ARGS[*]}"
	go test -race -tags e2e -count=1 -run '^$' "${PKG_ARGS[@]}" >/dev/null
	log "go test -race -tags e2e -p 1 -timeout 80m ${GO_TEST_ARGS[*]}"
	local test_started=$SECONDS test_rc=0 vet_rc=0
	go test -race -tags e2e -p 1 -timeout 80m "${GO_TEST_ARGS[@]}" 2>&1 | tee "${LOG_FILE}" || test_rc=$?
	local test_secs=$((SECONDS - test_started))
	local sim_rc=0 sim_line="not run (packages given)"
	if [[ ${#GO_TEST_ARGS[@]} -eq 1 && "${GO_TEST_ARGS[0]}" == ./... ]]; then
		# The race run above gives the simulator 500 seeds (the race
		# detector slows it tenfold); the full budget runs without it.
		log "go test ./fence/fencesim -run ^TestSim\$ -seeds 5000"
		local sim_log="${LOG_FILE%.log}-sim.log"
		go test -count=1 -timeout 10m ./fence/fencesim -run '^TestSim$' -seeds 5000 -v >"${sim_log}" 2>&1 || sim_rc=$?
		grep -vE '^=== RUN' "${sim_log}" | tail -n 40
		cat "${sim_log}" >>"${LOG_FILE}"
		sim_line="$([[ ${sim_rc} -eq 0 ]] && echo PASS || echo "FAIL (exit ${sim_rc})"); $(grep -oE '[0-9]+ seeds in [^;]*' "${sim_log}" | tail -n 1)"
	fi
	local weed_rc=0 weed_line="not run (packages given; MMSIDECAR_TEST_SEAWEEDFS=1 runs it)" weed_secs=0
	if [[ "${MMSIDECAR_TEST_SEAWEEDFS:-}" == 1 ]] || [[ ${#GO_TEST_ARGS[@]} -eq 1 && "${GO_TEST_ARGS[0]}" == ./... ]]; then
		start_seaweedfs
		local weed_started=$SECONDS weed_log="${LOG_FILE%.log}-seaweedfs.log"
		log "SeaweedFS pass: go test -race -p 1 -run '${S3_SUITES}' ${S3_SUITE_PACKAGES[*]}"
		# 8 racing rounds instead of 25: a contended round of 16
		# writers takes seconds on SeaweedFS (docs/stores.md).
		MMSIDECAR_STORETEST_ROUNDS="${MMSIDECAR_STORETEST_ROUNDS:-8}" \
			MMSIDECAR_TEST_S3_NAME=seaweedfs MMSIDECAR_TEST_S3_ENDPOINT="${WEED_ENDPOINT}" \
			MMSIDECAR_TEST_S3_ACCESS_KEY="${WEED_ACCESS_KEY}" MMSIDECAR_TEST_S3_SECRET_KEY="${WEED_SECRET_KEY}" \
			go test -race -count=1 -p 1 -timeout 20m -v -run "${S3_SUITES}" "${S3_SUITE_PACKAGES[@]}" >"${weed_log}" 2>&1 || weed_rc=$?
		weed_secs=$((SECONDS - weed_started))
		grep -E '^(ok|FAIL|---|panic)' "${weed_log}" | grep -vE '^    ---' | tail -n 40
		weed_line="$([[ ${weed_rc} -eq 0 ]] && echo PASS || echo "FAIL (exit ${weed_rc})") in ${weed_secs}s; $(grep -cE '^ok[[:space:]]' "${weed_log}" || true) packages ok; log ${weed_log}"
	fi
	log "go vet -tags e2e ${PKG_ARGS[*]}"
	go vet -tags e2e "${PKG_ARGS[@]}" 2>&1 | tee -a "${LOG_FILE}" || vet_rc=$?

	echo
	echo "==================== mmsidecar test summary ===================="
	echo "go test:  $([[ ${test_rc} -eq 0 ]] && echo PASS || echo "FAIL (exit ${test_rc})")  in ${test_secs}s"
	echo "simulator (5,000 seeds, no -race): ${sim_line}"
	echo "SeaweedFS (contract, probe, check, runner integration): ${weed_line}"
	echo "go vet:   $([[ ${vet_rc} -eq 0 ]] && echo PASS || echo "FAIL (exit ${vet_rc})")"
	echo "packages: $(grep -cE '^ok[[:space:]]' "${LOG_FILE}" || true) ok, $(grep -cE '^FAIL[[:space:]]' "${LOG_FILE}" || true) failed, $(grep -cE '^\?[[:space:]]' "${LOG_FILE}" || true) without tests"
	# Only when go test failed: passing tests may echo a child's "--- FAIL"
	# (the checks that run a broken store or a planted bug on purpose).
	if [[ ${test_rc} -ne 0 ]] && grep -qE '^[[:space:]]*--- FAIL' "${LOG_FILE}"; then
		echo "failed tests:"
		grep -E '^[[:space:]]*--- FAIL' "${LOG_FILE}" | sed 's/^/  /'
	fi
	echo "SeaweedFS: ${WEED_ENDPOINT:-not started} (${WEED_VERSION})"
	echo "MinIO:    ${MINIO_ENDPOINT} (${MINIO_VERSION}); E2E=${MMSIDECAR_E2E} CHAOS=${MMSIDECAR_CHAOS} CHAOS_CLUSTER=${MMSIDECAR_CHAOS_CLUSTER} CHAOS_SEAWEEDFS=${MMSIDECAR_CHAOS_SEAWEEDFS}"
	if [[ -s "${E2E_REPORT}" ]]; then
		echo "end-to-end scenarios (${E2E_REPORT}):"
		sed 's/^/  /' "${E2E_REPORT}"
	fi
	if compgen -G "${ARTIFACTS_DIR}/*" >/dev/null; then
		echo "artifacts (${ARTIFACTS_DIR}):"
		ls -1 "${ARTIFACTS_DIR}" | sed 's/^/  /'
	fi
	echo "log:      ${LOG_FILE}"
	echo "total:    $((SECONDS - started))s"
	echo "================================================================"
	[[ ${test_rc} -eq 0 && ${vet_rc} -eq 0 && ${sim_rc} -eq 0 && ${weed_rc} -eq 0 ]]
}

main "$@"
