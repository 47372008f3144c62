#!/usr/bin/env bash
# User-space memory per idle authenticated connection on one node:
# (RSS with N idle connections - RSS with none) / N.
#
# The baseline is taken after a warm-up round of WARMUP connections that
# are opened and closed again, so that one-time allocations (first buffers,
# table growth, allocator arenas touched on first use) are in the baseline
# and not charged to the connections.
#
# Usage: bench/scripts/idle-memory.sh [N] [OUT_DIR]   (defaults 15000, a temp dir)
# Environment: CORES (executors, default 2), WARMUP (default 1000),
#              PORT (WS port; HTTP is PORT+1; default 18080)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
N="${1:-15000}"
OUT="${2:-$(mktemp -d /tmp/corecast-idle.XXXXXX)}"
CORES="${CORES:-2}"
WARMUP="${WARMUP:-1000}"
PORT="${PORT:-18080}"
NODE_BIN="$ROOT/target/release/corecast"
BENCH="$ROOT/target/release/corecast-bench"
[ -x "$NODE_BIN" ] && [ -x "$BENCH" ] || (cd "$ROOT" && cargo build --release --workspace)
ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT"
SECRET="idle-bench-$RANDOM$RANDOM"

CORECAST_CORES="$CORES" CORECAST_WS_LISTEN="127.0.0.1:$PORT" \
CORECAST_HTTP_LISTEN="127.0.0.1:$((PORT + 1))" CORECAST_JWT_SECRET="$SECRET" \
CORECAST_API_KEYS="idle-bench-key" "$NODE_BIN" >"$OUT/node.log" 2>&1 &
NODE=$!
trap 'kill "$NODE" 2>/dev/null || true; wait "$NODE" 2>/dev/null || true' EXIT
ready=0
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$((PORT + 1))/readyz" >/dev/null; then ready=1; break; fi
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    echo "node did not become ready; see $OUT/node.log" >&2
    exit 1
fi
"$BENCH" idle --ws "ws://127.0.0.1:$PORT" --jwt-secret "$SECRET" --n "$WARMUP" \
    --out "$OUT/warmup" --server-pid "$NODE" >/dev/null 2>&1
sleep 2
"$BENCH" idle --ws "ws://127.0.0.1:$PORT" --jwt-secret "$SECRET" --n "$N" \
    --out "$OUT/idle" --server-pid "$NODE" | grep -E "connected|server RSS"
echo "summary: $OUT/idle/summary.json"
