#!/usr/bin/env bash
# Run the whole mmsidecar test suite against a real MinIO.
#
#   scripts/test.sh                           # go test -race ./...
#   scripts/test.sh -run Contract ./store/... # extra args go to `go test`
#
# Works as root on a fresh Debian 12 with Go at /usr/local/go, and is safe
# to run again: it installs only what is missing (Debian packages, the
# pinned MinIO build under ~/.cache/mmsidecar/bin), starts one MinIO on a
# random 127.0.0.1 port with a throw-away data directory, runs the tests
# with the environment the suites read, and always stops that MinIO.
set -euo pipefail

MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
CACHE_BIN="${HOME}/.cache/mmsidecar/bin"
MINIO_BIN="${CACHE_BIN}/minio"
LOG_FILE="${HOME}/.cache/mmsidecar/last-test.log"
E2E_REPORT="${HOME}/.cache/mmsidecar/last-e2e-report.txt"
# The end-to-end test (./e2e, build tag e2e) writes its scenario table
# here; the summary prints it (go test hides passing tests' output).
# Debian packages the suites need: mailman3 for the real-Mailman tests,
# chromium for the cluster page's test (headless), the rest for TLS roots,
# process and socket inspection.
DEB_PACKAGES=(mailman3 chromium ca-certificates curl file iproute2 procps util-linux)
# Files tests leave for people to look at (the cluster page's screenshot).
ARTIFACTS_DIR="${HOME}/.cache/mmsidecar/artifacts"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:${PATH}"

TMP_DIR=""
MINIO_PID=""
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
	start_minio

	export MMSIDECAR_MINIO_BIN="${MINIO_BIN}"
	export MMSIDECAR_TEST_MINIO=require
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
	log "go vet -tags e2e ${PKG_ARGS[*]}"
	go vet -tags e2e "${PKG_ARGS[@]}" 2>&1 | tee -a "${LOG_FILE}" || vet_rc=$?

	echo
	echo "==================== mmsidecar test summary ===================="
	echo "go test:  $([[ ${test_rc} -eq 0 ]] && echo PASS || echo "FAIL (exit ${test_rc})")  in ${test_secs}s"
	echo "simulator (5,000 seeds, no -race): ${sim_line}"
	echo "go vet:   $([[ ${vet_rc} -eq 0 ]] && echo PASS || echo "FAIL (exit ${vet_rc})")"
	echo "packages: $(grep -cE '^ok[[:space:]]' "${LOG_FILE}" || true) ok, $(grep -cE '^FAIL[[:space:]]' "${LOG_FILE}" || true) failed, $(grep -cE '^\?[[:space:]]' "${LOG_FILE}" || true) without tests"
	# Only when go test failed: passing tests may echo a child's "--- FAIL"
	# (the checks that run a broken store or a planted bug on purpose).
	if [[ ${test_rc} -ne 0 ]] && grep -qE '^[[:space:]]*--- FAIL' "${LOG_FILE}"; then
		echo "failed tests:"
		grep -E '^[[:space:]]*--- FAIL' "${LOG_FILE}" | sed 's/^/  /'
	fi
	echo "MinIO:    ${MINIO_ENDPOINT} (${MINIO_VERSION}); E2E=${MMSIDECAR_E2E} CHAOS=${MMSIDECAR_CHAOS} CHAOS_CLUSTER=${MMSIDECAR_CHAOS_CLUSTER}"
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
	[[ ${test_rc} -eq 0 && ${vet_rc} -eq 0 && ${sim_rc} -eq 0 ]]
}

main "$@"
