#!/usr/bin/env bash
# Start mmsidecar on its embedded default (a directory store on local disk,
# no MinIO, no Mailman), feed it Mailman-shaped queue entries and show them
# being mirrored, finished and cleaned up. Everything lives in a temp dir.
# Usage: scripts/demo.sh [seconds to keep running afterwards, default 0]
set -euo pipefail
cd "$(dirname "$0")/.."
keep=${1:-0}
command -v go >/dev/null || { echo "demo: Go is not installed (see README)" >&2; exit 1; }
work=$(mktemp -d /tmp/mmsidecar-demo.XXXXXX)
echo "==> building mmsidecar into $work"
go build -o "$work/mmsidecar" ./cmd/mmsidecar
mkdir -p "$work/queue/in" "$work/queue/pipeline" "$work/queue/out" "$work/queue/bad"
export MMSIDECAR_NODE_ID=demo MMSIDECAR_QUEUE_DIR="$work/queue" MMSIDECAR_STORE_DIR="$work/store"
export MMSIDECAR_LISTEN_ADDR=${MMSIDECAR_LISTEN_ADDR:-127.0.0.1:19464} MMSIDECAR_LOG_LEVEL=${MMSIDECAR_LOG_LEVEL:-debug}
"$work/mmsidecar" run >"$work/sidecar.log" 2>&1 &
pid=$!
cleanup() { kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; echo "==> stopped; files kept in $work"; }
trap cleanup EXIT
echo "==> sidecar pid $pid, embedded store in $work/store, queues in $work/queue"
for _ in $(seq 300); do
  grep -q 'msg=ready' "$work/sidecar.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/sidecar.log"; exit 1; }
  sleep 0.1
done
grep -q 'msg=ready' "$work/sidecar.log" || { cat "$work/sidecar.log"; echo "demo: sidecar not ready" >&2; exit 1; }
echo "==> sidecar is ready; its cluster page: http://${MMSIDECAR_LISTEN_ADDR}/"
echo "    (the embedded store is for trying the sidecar out: the WARNING below says that"
echo "    a real cluster needs MMSIDECAR_S3_ENDPOINT, a store every node can see)"

# Enqueue like Mailman: write <time>+<sha1>.pck.tmp, then rename to .pck.
enqueue() { # queue text
  local base
  base="$(date +%s.%6N)+$(printf '%s' "$2$RANDOM" | sha1sum | cut -c1-40)"
  printf '%s' "$2" >"$work/queue/$1/$base.pck.tmp"
  mv "$work/queue/$1/$base.pck.tmp" "$work/queue/$1/$base.pck"
  echo "$base"
}
echo "==> Mailman enqueues three posts into 'in'"
for i in 1 2 3; do enqueue in "post $i" >/dev/null; done
sleep 1
"$work/mmsidecar" status
echo
echo "==> a runner moves them on: in -> out, then delivers them"
for f in "$work"/queue/in/*.pck; do
  b=$(basename "$f" .pck); mv "$f" "$work/queue/in/$b.bak"
  enqueue out "delivered $b" >/dev/null; rm "$work/queue/in/$b.bak"
done
sleep 1
"$work/mmsidecar" status
for f in "$work"/queue/out/*.pck; do b=$(basename "$f" .pck); mv "$f" "$work/queue/out/$b.bak"; rm "$work/queue/out/$b.bak"; done
sleep 1
echo
echo "==> all delivered: the store holds nothing"
"$work/mmsidecar" status
echo
echo "==> the sidecar's log:"
cut -c1-200 "$work/sidecar.log"
if [ "$keep" -gt 0 ]; then echo "==> running $keep more seconds: try 'MMSIDECAR_STORE_DIR=$work/store MMSIDECAR_QUEUE_DIR=$work/queue $work/mmsidecar status'"; sleep "$keep"; fi
