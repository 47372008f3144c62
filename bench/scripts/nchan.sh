#!/usr/bin/env bash
# Runs the corecast-bench scenarios against nginx + nchan on loopback, for comparison.
#
# Installs Debian's nginx and libnginx-mod-nchan (apt-get) if missing, writes an nginx config
# in a temp dir (own prefix, loopback port, worker_rlimit_nofile under the 20000 fd cap),
# subscribes at /sub/{channel} (websocket) and publishes at POST /pub/{channel}, runs the
# scenarios with --target nchan, and stops nginx by PID.
#
# Usage: bench/scripts/nchan.sh [OUT_DIR]
# Environment (defaults): N=1000 SCENARIOS="idle broadcast unicast" MESSAGES=10 INTERVAL_MS=500
#   RATE=1000 DURATION=10 CONCURRENCY=32 PORT=18090 NCHAN_WORKERS=1 TIMEOUT=120
#   BENCH=target/release/corecast-bench (built with cargo if missing) EXTRA_ARGS=""
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-$ROOT/bench/results/nchan-$(date +%Y%m%d-%H%M%S)}"
N="${N:-1000}"
SCENARIOS="${SCENARIOS:-idle broadcast unicast}"
MESSAGES="${MESSAGES:-10}"
INTERVAL_MS="${INTERVAL_MS:-500}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-10}"
CONCURRENCY="${CONCURRENCY:-32}"
PORT="${PORT:-18090}"
NCHAN_WORKERS="${NCHAN_WORKERS:-1}"
TIMEOUT="${TIMEOUT:-120}"
BENCH="${BENCH:-$ROOT/target/release/corecast-bench}"
# Under the 20000 fds a process may hold on these machines.
NOFILE=19000
WORKER_CONNECTIONS=18500

log() { echo "[nchan.sh $(date +%H:%M:%S)] $*" >&2; }

if [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || ! command -v nginx >/dev/null; then
    log "installing nginx + libnginx-mod-nchan"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null
fi
if [ ! -x "$BENCH" ]; then
    log "building corecast-bench (release)"
    (cd "$ROOT" && cargo build --release -p corecast-bench)
fi

DIR="$(mktemp -d /tmp/corecast-nchan.XXXXXX)"
mkdir -p "$DIR/logs" "$DIR/tmp" "$OUT"
cat > "$DIR/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off;
master_process on;
worker_processes $NCHAN_WORKERS;
worker_rlimit_nofile $NOFILE;
pid $DIR/nginx.pid;
error_log $DIR/logs/error.log warn;
events {
    worker_connections $WORKER_CONNECTIONS;
    multi_accept on;
}
http {
    access_log off;
    client_body_temp_path $DIR/tmp/body;
    proxy_temp_path $DIR/tmp/proxy;
    fastcgi_temp_path $DIR/tmp/fastcgi;
    uwsgi_temp_path $DIR/tmp/uwsgi;
    scgi_temp_path $DIR/tmp/scgi;
    nchan_max_reserved_memory 512M;
    server {
        listen 127.0.0.1:$PORT backlog=4096;
        location ~ ^/sub/([A-Za-z0-9_]+)\$ {
            nchan_subscriber websocket;
            nchan_channel_id \$1;
            nchan_subscriber_first_message newest;
        }
        location ~ ^/pub/([A-Za-z0-9_]+)\$ {
            nchan_publisher http;
            nchan_channel_id \$1;
            nchan_message_buffer_length 16;
            nchan_message_timeout 60s;
        }
    }
}
CONF

nginx -t -p "$DIR" -c "$DIR/nginx.conf" 2>"$DIR/logs/test.log" || { cat "$DIR/logs/test.log" >&2; exit 1; }
nginx -p "$DIR" -c "$DIR/nginx.conf" &
NGINX_PID=$!
stop() {
    if kill -0 "$NGINX_PID" 2>/dev/null; then
        log "stopping nginx (pid $NGINX_PID)"
        kill -QUIT "$NGINX_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NGINX_PID" 2>/dev/null || true
    fi
}
trap stop EXIT

for _ in $(seq 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$PORT/pub/probe" -X POST -d '{}'; then break; fi
    sleep 0.1
done
sleep 0.3
PIDS=(--server-pid "$NGINX_PID")
for child in $(cat "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null); do PIDS+=(--server-pid "$child"); done
log "nginx + nchan up on 127.0.0.1:$PORT (pids: ${PIDS[*]//--server-pid /}); results in $OUT"

COMMON=(--target nchan --ws "ws://127.0.0.1:$PORT/sub" --http "http://127.0.0.1:$PORT/pub" --n "$N" --timeout "$TIMEOUT" "${PIDS[@]}")
for scenario in $SCENARIOS; do
    log "scenario $scenario (n=$N)"
    case "$scenario" in
        idle) "$BENCH" idle "${COMMON[@]}" --out "$OUT/idle" ${EXTRA_ARGS:-} ;;
        broadcast) "$BENCH" broadcast "${COMMON[@]}" --out "$OUT/broadcast" --messages "$MESSAGES" --interval-ms "$INTERVAL_MS" ${EXTRA_ARGS:-} ;;
        unicast) "$BENCH" unicast "${COMMON[@]}" --out "$OUT/unicast" --rate "$RATE" --duration "$DURATION" --concurrency "$CONCURRENCY" ${EXTRA_ARGS:-} ;;
        *) log "unknown scenario $scenario"; exit 2 ;;
    esac
done
dirs=()
for scenario in $SCENARIOS; do dirs+=("$OUT/$scenario"); done
"$BENCH" report "${dirs[@]}"
