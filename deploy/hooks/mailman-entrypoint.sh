#!/bin/sh
# mailman-entrypoint.sh: entry point wrapper for a mailman-core container
# that runs next to an mmsidecar container (deploy/compose).
#
#   mailman-entrypoint.sh <image entry point> [args...]
#
# It does for Compose what Kubernetes does with the native sidecar's
# startupProbe and Mailman's preStop hook:
#   - start Mailman only once the sidecar answers GET /readyz: a node that
#     was declared dead while it was down must hold its old entries before
#     its runners see them;
#   - on SIGTERM (docker stop, docker compose stop/down), first drain the
#     sidecar while Mailman's runners are still up (drain.sh, next to this
#     file), then pass SIGTERM on to Mailman and wait for it to exit.
# Compose's stop_grace_period must cover DRAIN_HOOK_DEADLINE plus
# Mailman's own stop.
#
# Settings (environment): DRAIN_HOOK_URL (the sidecar, required, e.g.
# http://mmsidecar-a:9464), READY_WAIT (seconds to wait for readiness
# before giving up and exiting 1, default 600), and drain.sh's DRAIN_HOOK_*.
set -u

url="${DRAIN_HOOK_URL:?set DRAIN_HOOK_URL to the sidecar, e.g. http://mmsidecar-a:9464}"
ready_wait="${READY_WAIT:-600}"
here=$(dirname "$0")

log() { echo "mailman-entrypoint: $*" >&2; }

if [ "$#" -eq 0 ]; then
	log "usage: mailman-entrypoint.sh <command> [args...]"
	exit 2
fi

start=$(date +%s)
until curl -fsS -o /dev/null --max-time 2 "${url}/readyz" 2>/dev/null; do
	if [ $(($(date +%s) - start)) -ge "${ready_wait}" ]; then
		log "sidecar at ${url} not ready after ${ready_wait}s: not starting Mailman"
		exit 1
	fi
	sleep 1
done
log "sidecar ready: starting Mailman"

"$@" &
child=$!
stopping=0
on_stop() {
	[ "${stopping}" -eq 1 ] && return
	stopping=1
	log "stopping: draining the sidecar before Mailman stops"
	DRAIN_HOOK_URL="${url}" sh "${here}/drain.sh" || log "drain incomplete; stopping Mailman anyway"
	kill -TERM "${child}" 2>/dev/null
}
trap on_stop TERM INT

# wait returns early when a trapped signal arrives: wait again until the
# child has really exited, and return its status.
rc=0
while :; do
	wait "${child}"
	rc=$?
	kill -0 "${child}" 2>/dev/null || break
done
exit "${rc}"
