#!/bin/sh
# drain.sh: hand this node's Mailman backlog to its peers before Mailman
# stops.
#
# Mailman's container runs it (the Kubernetes preStop hook; the Compose
# entry point wrapper on SIGTERM) while Mailman's runners are still up, so
# entries in flight (.bak) finish here and the successors they write are
# handed over too. It drives the sidecar's HTTP API the way `mmsidecar
# drain` does (POST /drain, then GET /drain until "done"), but needs only
# sh and curl, which the mailman-core image has; the mmsidecar binary is
# not in Mailman's image.
#
# Settings (environment):
#   DRAIN_HOOK_URL       the sidecar's listener (default http://127.0.0.1:9464)
#   DRAIN_HOOK_TOKEN_FILE  file holding the sidecar's admin secret (its
#                        MMSIDECAR_ADMIN_TOKEN_FILE; default
#                        /run/secrets/mmsidecar-admin/admin-token): POST
#                        /drain needs it
#   DRAIN_HOOK_DEADLINE  seconds to wait for the drain (default 300); keep
#                        it well under the stop timeout (Kubernetes:
#                        terminationGracePeriodSeconds, Compose:
#                        stop_grace_period)
#   DRAIN_HOOK_NO_PEER   seconds without a live peer after which it stops
#                        waiting (default 20): with no peer there is nobody
#                        to hand entries to (last node, or every node
#                        stopping at once)
#   DRAIN_HOOK_LOG       file to append the log to instead of stderr (a
#                        Kubernetes preStop hook's output is shown only in a
#                        FailedPreStopHook event); stderr if not writable
#
# Exit 0 when the node holds nothing, or when no peer is left to take
# anything (the sidecar then refuses the drain and moves nothing: the
# backlog stays on this node for its next start); 1 when the sidecar
# cannot be reached, refuses the secret, or the deadline passes. Mailman is stopped either way; what is left stays in the node's
# namespace in the store and on its disk and is settled when the node
# starts again (or taken over by a peer if it does not come back).
set -u

url="${DRAIN_HOOK_URL:-http://127.0.0.1:9464}"
token_file="${DRAIN_HOOK_TOKEN_FILE:-/run/secrets/mmsidecar-admin/admin-token}"
deadline="${DRAIN_HOOK_DEADLINE:-300}"
no_peer="${DRAIN_HOOK_NO_PEER:-20}"

if [ -n "${DRAIN_HOOK_LOG:-}" ] && (: 2>>"${DRAIN_HOOK_LOG}") 2>/dev/null; then
	exec 2>>"${DRAIN_HOOK_LOG}"
fi

log() { echo "mmsidecar drain hook: $*" >&2; }

if ! token=$(cat "${token_file}" 2>/dev/null) || [ -z "${token}" ]; then
	log "cannot read the sidecar's admin secret from ${token_file} (DRAIN_HOOK_TOKEN_FILE): Mailman stops without handing its backlog over"
	exit 1
fi
# The secret goes to curl on stdin, not on its command line (ps shows
# that to every user).
if ! reply=$(printf 'header = "Authorization: Bearer %s"\n' "${token}" |
	curl -sS --max-time 5 -X POST --config - -w '\n%{http_code}' "${url}/drain"); then
	log "cannot reach the sidecar at ${url}: Mailman stops without handing its backlog over"
	exit 1
fi
code=${reply##*
}
reply=${reply%
*}
case "${code}" in
202) ;;
409)
	case "${reply}" in
	*'no live peer'*)
		log "no live peer to take the backlog: nothing was moved, it stays on this node until it starts again (${reply})"
		exit 0
		;;
	esac
	log "the sidecar refused the drain (${code}): ${reply}"
	exit 1
	;;
*)
	log "the sidecar refused the drain (${code}): ${reply}"
	exit 1
	;;
esac
log "draining: ${reply}"

start=$(date +%s)
last_log=${start}
no_peer_since=""
while :; do
	case "${reply}" in
	*'"done":true'*)
		log "drained: this node holds nothing"
		exit 0
		;;
	esac
	now=$(date +%s)
	case "${reply}" in
	*'"peers":0,'* | *'"peers":0}'*)
		[ -n "${no_peer_since}" ] || no_peer_since=${now}
		if [ $((now - no_peer_since)) -ge "${no_peer}" ]; then
			log "no live peer for ${no_peer}s: stopping without handing the rest over (${reply})"
			exit 0
		fi
		;;
	*)
		no_peer_since=""
		;;
	esac
	if [ $((now - start)) -ge "${deadline}" ]; then
		log "not drained after ${deadline}s: stopping anyway (${reply})"
		exit 1
	fi
	if [ $((now - last_log)) -ge 10 ]; then
		log "still draining: ${reply}"
		last_log=${now}
	fi
	sleep 1
	if ! reply=$(curl -fsS --max-time 5 "${url}/drain"); then
		log "the sidecar stopped answering at ${url}"
		exit 1
	fi
done
