#!/usr/bin/env bash
# WebSocket scale-out benchmark of sparc: 50,100 connections on this machine.
#
# A fresh PostgreSQL database; one release `sparc serve` for the REST API (127.0.0.1:18480)
# and three `sparc gateway` processes (127.0.0.1:18481-18483), all on NATS JetStream (a
# namespace of their own). Then three `websocket` load processes (bench/src/bin/websocket.rs),
# each PER_PROCESS connections (100 users, 4 source addresses) spread over the three gateways,
# since one process may hold at most ~19,000 (20,000 open files): the first two hold their
# connections through a long phase without writing (a connection that has received frames
# keeps its write buffer, so memory is read over idle ones), while the third, started
# STAGGER seconds later, writes 100 tasks/s for 5 s and then sends 5 agent changes that
# every connection of all three receives. The third process's report is the measurement:
# fan-out of one change to all connections (p50/p99/max of the frames its own connections
# got), commit → client with everything connected, and gateway memory per idle connection
# (RSS delta of the three gateways over its own connections).
#
# Env: PER_PROCESS (default 16700), STAGGER (25), DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/sparc_bench_scale; DROPPED and recreated), NATS_URL
# (default nats://127.0.0.1:4222). Takes about two minutes. Targets (issue: real time): 50,000
# connections; <= 8 KiB gateway memory per idle connection; fan-out p99 <= 500 ms.
set -euo pipefail
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/sparc_bench_scale}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
PER_PROCESS=${PER_PROCESS:-16700}
STAGGER=${STAGGER:-25}
API=127.0.0.1:18480
GATEWAYS=(127.0.0.1:18481 127.0.0.1:18482 127.0.0.1:18483)
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LOAD_BIN=$TARGET_DIR/release/websocket
bench_database "$DATABASE_URL"
require psql cargo curl jq

echo "== sparc WebSocket scale-out benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, 3 x $PER_PROCESS connections"
echo "   load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
build_release
recreate_database
prepare_sparc bench_scale
"$SPARC_BIN" serve --listen "$API" >"$WORK/serve.log" 2>&1 &
BACKGROUND+=($!)
wait_ready "http://$API/api/v1/readiness" "$WORK/serve.log"
wait_login "http://$API" wsadmin "$ADMIN_PASSWORD"
GATEWAY_PIDS=()
for i in "${!GATEWAYS[@]}"; do
	"$SPARC_BIN" gateway --listen "${GATEWAYS[$i]}" >"$WORK/gateway$i.log" 2>&1 &
	BACKGROUND+=($!)
	GATEWAY_PIDS+=($!)
	wait_ready "http://${GATEWAYS[$i]}/ws/health" "$WORK/gateway$i.log"
done
gateway_urls=$(printf 'ws://%s,' "${GATEWAYS[@]}")
gateway_pids=$(
	IFS=,
	echo "${GATEWAY_PIDS[*]}"
)

load() { # NAME RATE SECONDS
	SPARC_PASSWORD=$ADMIN_PASSWORD "$LOAD_BIN" --api "http://$API" --gateways "${gateway_urls%,}" \
		--gateway-pids "$gateway_pids" --connections "$PER_PROCESS" --users 100 \
		--source-addresses 4 --rate "$2" --seconds "$3" --admin wsadmin --run "$1-$$" --json \
		>"$WORK/$1.json" 2>"$WORK/$1.err"
}
echo "== two holding processes ($PER_PROCESS connections each, no writes), then the measuring one after ${STAGGER}s"
load hold1 0 $((STAGGER + 45)) &
hold1=$!
load hold2 0 $((STAGGER + 45)) &
hold2=$!
sleep "$STAGGER"
load measure 100 5 || { cat "$WORK/measure.err" >&2; exit 1; }
wait "$hold1" "$hold2" || { cat "$WORK"/hold*.err >&2; exit 1; }
held=$(jq -s 'map(.connections - .connect_errors) | add' "$WORK"/hold1.json "$WORK"/hold2.json "$WORK"/measure.json)
echo "== results (the measuring process; all three held $held connections)"
jq -r '"connect errors:            \(.connect_errors)",
  "gateway memory per idle connection: \(.gateway_kib_per_connection // "n/a") KiB (target <= 8)",
  "fan-out to all connections: p50 \(.fan_out.p50_ms) ms, p99 \(.fan_out.p99_ms) ms, max \(.fan_out.max_ms) ms (target p99 <= 500 ms); frames \(.fan_out_frames_received) of \(.fan_out_frames_expected)",
  "commit -> client at \(.commands_per_s | floor) tasks/s: p50 \(.commit_to_client.p50_ms) ms, p99 \(.commit_to_client.p99_ms) ms"' \
	"$WORK/measure.json"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
