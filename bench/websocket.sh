#!/usr/bin/env bash
# WebSocket benchmark of sparc in one command: a fresh PostgreSQL database, the release
# `sparc serve` on it with NATS JetStream as its change bus (its own namespace, so runs never
# share a stream), an admin from `sparc user create`, then the release `websocket` load client
# (bench/src/bin/websocket.rs): CONNECTIONS authenticated connections of USERS users, tasks
# created over REST at each of RATES per second (commit → client latency of the owner's
# frames) and BROADCASTS agent changes sent to every connection (fan-out).
#
# Env: CONNECTIONS (default 1000), USERS (100), RATES (comma-separated, default 100,1000),
# SECONDS (measured seconds per rate, default 10), BROADCASTS (5), DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/sparc_bench_ws; DROPPED and recreated), NATS_URL (default
# nats://127.0.0.1:4222). Works from any directory.
#
# Targets (issue: real time): commit → client p50 <= 5 ms and p99 <= 25 ms at 1,000 writes/s.
# For 50,000 connections see bench/README.md (several gateways and load processes).
if printenv SECONDS >/dev/null 2>&1; then DURATION=$SECONDS; else DURATION=10; fi
set -euo pipefail
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/sparc_bench_ws}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
CONNECTIONS=${CONNECTIONS:-1000}
USERS=${USERS:-100}
RATES=${RATES:-100,1000}
BROADCASTS=${BROADCASTS:-5}
LISTEN=127.0.0.1:18470
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LOAD_BIN=$TARGET_DIR/release/websocket
bench_database "$DATABASE_URL"
require psql cargo curl jq

echo "== sparc WebSocket benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
echo "   load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every figure)"
build_release
recreate_database
prepare_sparc bench_ws
export SPARC_LISTEN=$LISTEN
"$SPARC_BIN" serve >"$WORK/serve.log" 2>&1 &
BACKGROUND+=($!)
SERVER_PID=$!
wait_ready "http://$LISTEN/api/v1/readiness" "$WORK/serve.log"
wait_login "http://$LISTEN" wsadmin "$ADMIN_PASSWORD"
IFS=', ' read -r -a RATE_LIST <<<"$RATES"
for rate in "${RATE_LIST[@]}"; do
	echo "== $CONNECTIONS connections, $USERS users, $rate tasks/s for ${DURATION}s, $BROADCASTS broadcasts"
	SPARC_PASSWORD=$ADMIN_PASSWORD "$LOAD_BIN" --api "http://$LISTEN" --gateways "ws://$LISTEN" \
		--gateway-pids "$SERVER_PID" --connections "$CONNECTIONS" --users "$USERS" \
		--rate "$rate" --seconds "$DURATION" --broadcasts "$BROADCASTS" --admin wsadmin \
		--run "r$rate-$$" --json >"$WORK/r$rate.json"
	jq -r --argjson rate "$rate" '"asked \($rate)/s, sustained \(.commands_per_s | floor)/s: commit -> client p50 \(.commit_to_client.p50_ms) ms, p99 \(.commit_to_client.p99_ms) ms, max \(.commit_to_client.max_ms) ms" + (if $rate == 1000 then (if .commit_to_client.p50_ms <= 5 and .commit_to_client.p99_ms <= 25 then " (targets met)" else " (targets p50 <= 5, p99 <= 25: MISSED)" end) else "" end),
	  "fan-out to \(.connections - .connect_errors) connections: p50 \(.fan_out.p50_ms) ms, p99 \(.fan_out.p99_ms) ms; frames \(.fan_out_frames_received) of \(.fan_out_frames_expected); connect errors \(.connect_errors); gateway memory \(.gateway_kib_per_connection // "n/a") KiB per connection"' \
		"$WORK/r$rate.json"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
psql "$ADMIN_URL" -q -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" || true
