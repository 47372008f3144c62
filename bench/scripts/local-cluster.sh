#!/usr/bin/env bash
# Brings up NODES corecast nodes on loopback, meshed together, runs one corecast-bench
# scenario against all of them, and stops them by PID.
#
# Usage: bench/scripts/local-cluster.sh SCENARIO [corecast-bench args...]
#   e.g. NODES=4 bench/scripts/local-cluster.sh broadcast --n 40000 --messages 10 --out /tmp/run
# The script adds --ws, --http and --server-pid for every node, and --jwt-secret / --api-key.
#
# Environment (defaults):
#   NODES=2               node processes (each holds < 20000 fds: plan ~18000 connections per node)
#   CORES_PER_NODE=1      CORECAST_CORES of each node
#   MAX_CONNECTIONS=18000 CORECAST_MAX_CONNECTIONS of each node
#   MESH=auto             wire the mesh (auto: only when NODES > 1; 1 = always; 0 = never)
#   BASE_PORT=19000       node i listens on WS BASE+10i, HTTP BASE+10i+1, mesh BASE+10i+2
#   NODE_BIN=target/release/corecast, BENCH=target/release/corecast-bench (built if missing)
#   LOG_DIR=$(mktemp -d)  node logs
#   READY_TIMEOUT_S=60    wait for every /readyz
#   CLIENTS=1             client runs; more than 1 plays N client machines on this box (below)
#
# CLIENTS > 1 (needs OUT and PER_CLIENT_N, and no --n / --out in the args): client k runs
# `--n PER_CLIENT_N --uid-offset k*PER_CLIENT_N --source-addrs 127.(k+1).0.0/24`, samples the
# nodes through --server-metrics (as a remote machine would) and writes OUT/client-k; all start
# together (--start-at). For broadcast, clients 1.. are --receive-only and client 0 pushes once
# they all wait. Then `corecast-bench merge --out OUT/merged OUT/client-*`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
if [ $# -lt 1 ]; then
    sed -n '2,18p' "$0" >&2
    exit 2
fi
SCENARIO="$1"
shift
NODES="${NODES:-2}"
CORES_PER_NODE="${CORES_PER_NODE:-1}"
MAX_CONNECTIONS="${MAX_CONNECTIONS:-18000}"
MESH="${MESH:-auto}"
if [ "$MESH" = auto ]; then if [ "$NODES" -gt 1 ]; then MESH=1; else MESH=0; fi; fi
BASE_PORT="${BASE_PORT:-19000}"
NODE_BIN="${NODE_BIN:-$ROOT/target/release/corecast}"
BENCH="${BENCH:-$ROOT/target/release/corecast-bench}"
LOG_DIR="${LOG_DIR:-$(mktemp -d /tmp/corecast-cluster.XXXXXX)}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-60}"
CLIENTS="${CLIENTS:-1}"
SECRET="${CORECAST_JWT_SECRET:-bench-secret-$RANDOM$RANDOM$RANDOM}"
API_KEY="${CORECAST_API_KEY:-bench-key-$RANDOM$RANDOM$RANDOM}"

log() { echo "[local-cluster $(date +%H:%M:%S)] $*" >&2; }

if [ ! -x "$NODE_BIN" ]; then
    log "building corecast (release)"
    (cd "$ROOT" && cargo build --release -p corecast)
fi
if [ ! -x "$BENCH" ]; then
    log "building corecast-bench (release)"
    (cd "$ROOT" && cargo build --release -p corecast-bench)
fi
# Each node may hold up to the hard fd cap.
ulimit -n "$(ulimit -Hn)"
mkdir -p "$LOG_DIR"

PEERS=""
for ((i = 0; i < NODES; i++)); do
    PEERS+="${PEERS:+,}tcp://127.0.0.1:$((BASE_PORT + 10 * i + 2))"
done

PIDS=()
stop() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "node pid $pid still running after 15 s: killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    [ ${#PIDS[@]} -gt 0 ] && log "stopped ${#PIDS[@]} node(s); logs in $LOG_DIR"
}
trap stop EXIT

ARGS=()
PID_ARGS=()
METRICS_ARGS=()
for ((i = 0; i < NODES; i++)); do
    ws=$((BASE_PORT + 10 * i)); http=$((ws + 1)); mesh=$((ws + 2))
    envs=(
        CORECAST_NODE_ID="node$i"
        CORECAST_WS_LISTEN="127.0.0.1:$ws"
        CORECAST_HTTP_LISTEN="127.0.0.1:$http"
        CORECAST_JWT_SECRET="$SECRET"
        CORECAST_API_KEYS="$API_KEY"
        CORECAST_CORES="$CORES_PER_NODE"
        CORECAST_MAX_CONNECTIONS="$MAX_CONNECTIONS"
    )
    if [ "$MESH" = 1 ]; then
        envs+=(CORECAST_MESH_LISTEN="tcp://127.0.0.1:$mesh" CORECAST_MESH_PEERS="$PEERS")
    fi
    env "${envs[@]}" "$NODE_BIN" >"$LOG_DIR/node$i.log" 2>&1 &
    PIDS+=($!)
    ARGS+=(--ws "ws://127.0.0.1:$ws" --http "http://127.0.0.1:$http")
    PID_ARGS+=(--server-pid "$!")
    METRICS_ARGS+=(--server-metrics "http://127.0.0.1:$http/metrics")
done
log "started $NODES node(s): pids ${PIDS[*]}; waiting for /readyz"

deadline=$((SECONDS + READY_TIMEOUT_S))
for ((i = 0; i < NODES; i++)); do
    http=$((BASE_PORT + 10 * i + 1))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/readyz" || true)" = "200" ]; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            log "node$i exited; its log:"; tail -20 "$LOG_DIR/node$i.log" >&2; exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            log "node$i not ready after ${READY_TIMEOUT_S} s"; tail -20 "$LOG_DIR/node$i.log" >&2; exit 1
        fi
        sleep 0.2
    done
    log "node$i ready (pid ${PIDS[$i]})"
done

if [ "$CLIENTS" -le 1 ]; then
    log "running: corecast-bench $SCENARIO $* (${NODES} nodes)"
    "$BENCH" "$SCENARIO" "${ARGS[@]}" "${PID_ARGS[@]}" --jwt-secret "$SECRET" --api-key "$API_KEY" "$@"
    exit
fi

: "${OUT:?CLIENTS > 1 needs OUT (the directory for client-k and merged)}"
: "${PER_CLIENT_N:?CLIENTS > 1 needs PER_CLIENT_N (connections per client)}"
mkdir -p "$OUT"
START_AT=$(($(date +%s) + 5))
CLIENT_PIDS=()
client() {
    local k=$1
    shift
    "$BENCH" "$SCENARIO" "${ARGS[@]}" "${METRICS_ARGS[@]}" --jwt-secret "$SECRET" --api-key "$API_KEY" \
        --n "$PER_CLIENT_N" --uid-offset $((k * PER_CLIENT_N)) --source-addrs "127.$((k + 1)).0.0/24" \
        --label "client-$k" --out "$OUT/client-$k" "$@" 2>"$OUT/client-$k.log" &
    CLIENT_PIDS+=($!)
}
log "running $CLIENTS clients: corecast-bench $SCENARIO $* (${NODES} nodes); logs in $OUT/client-*.log"
if [ "$SCENARIO" = broadcast ]; then
    for ((k = 1; k < CLIENTS; k++)); do client "$k" --start-at "$START_AT" --receive-only "$@"; done
    deadline=$((SECONDS + 600))
    until [ "$(grep -l '^receive only: waiting' "$OUT"/client-*.log 2>/dev/null | wc -l)" -ge $((CLIENTS - 1)) ]; do
        if [ $SECONDS -ge $deadline ]; then log "receivers not waiting after 600 s"; exit 1; fi
        sleep 0.5
    done
    client 0 "$@"
else
    for ((k = 0; k < CLIENTS; k++)); do client "$k" --start-at "$START_AT" "$@"; done
fi
failed=0
for pid in "${CLIENT_PIDS[@]}"; do wait "$pid" || failed=1; done
grep -h -E '^(connected|deliveries|server RSS|unicast:|broadcast:)' "$OUT"/client-*.log >&2 || true
if [ "$failed" = 1 ]; then log "a client failed; see $OUT/client-*.log"; exit 1; fi
"$BENCH" merge --out "$OUT/merged" "$OUT"/client-*[0-9]
