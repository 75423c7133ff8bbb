#!/usr/bin/env bash
# Memory benchmark: the release `sparc serve` on a fresh PostgreSQL database, rate limits off,
# and the release `memory` load client (bench/src/bin/memory.rs) through /api/v1/memory:
#   1. fallback: no Memory MCP server; ENTRIES stores, then SECONDS of searches (FTS of the
#      memories read model);
#   2. server: the real @modelcontextprotocol/server-memory (tools/memory-server, npm ci) over
#      stdio; the same stores and searches, through it;
#   3. sync: the server kept down (its wrapper exits at once), PENDING stores (the fallback),
#      then the server let up: the time until /memory/health says pending_sync = 0 and CLOSED
#      (breaker open 1 s here, not the default 60 s; the supervisor's restart back-off is part
#      of the time).
# Env: ENTRIES (10000), PENDING (1000), SECONDS (10), CONNECTIONS (16), DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/sparc_bench_memory; DROPPED and recreated).
if printenv SECONDS >/dev/null 2>&1; then DURATION=$SECONDS; else DURATION=10; fi
set -euo pipefail
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/sparc_bench_memory}
ENTRIES=${ENTRIES:-10000}
PENDING=${PENDING:-1000}
CONNECTIONS=${CONNECTIONS:-16}
LISTEN=127.0.0.1:18472
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LOAD_BIN=$TARGET_DIR/release/memory
SERVER_JS=$ROOT/tools/memory-server/node_modules/@modelcontextprotocol/server-memory/dist/index.js
bench_database "$DATABASE_URL"
require psql cargo curl jq node npm
[ -e "$SERVER_JS" ] || npm ci --prefix "$ROOT/tools/memory-server" --no-audit --no-fund

echo "== sparc memory benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
echo "   load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
build_release
export DATABASE_URL RUST_LOG=warn SPARC_LISTEN=$LISTEN
export SPARC_JWT_SECRET="bench-$(date +%s%N)-not-a-real-secret-at-all"
export SPARC_RATE_LIMIT_PER_MINUTE=0 SPARC_AUTH_RATE_LIMIT_PER_MINUTE=0
# The wrapper the service starts: exits at once while $WORK/down exists (a server that is down).
cat >"$WORK/run.sh" <<SCRIPT
#!/bin/sh
[ -e '$WORK/down' ] && exit 1
MEMORY_FILE_PATH='$WORK/memory.jsonl' exec node '$SERVER_JS'
SCRIPT

serve() { # [memory command]
	if [ -n "${1:-}" ]; then export SPARC_MEMORY_MCP_COMMAND=$1; else unset SPARC_MEMORY_MCP_COMMAND; fi
	"$SPARC_BIN" serve >"$WORK/serve.log" 2>&1 &
	SERVE_PID=$!
	BACKGROUND+=("$SERVE_PID")
	wait_ready "http://$LISTEN/api/v1/readiness" "$WORK/serve.log"
}
stop_serve() { kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; }
# Until the service reaches its Memory MCP server (the child's start takes a moment, and calls
# before it are answered from the fallback).
wait_available() {
	for _ in $(seq 1 300); do
		[ "$(curl -fsS "http://$LISTEN/api/v1/health" | jq -r .memory_mcp)" = available ] && return
		sleep 0.1
	done
	echo "the Memory MCP server never became available" >&2
	exit 1
}
load() { "$LOAD_BIN" --api "http://$LISTEN" --connections "$CONNECTIONS" --seconds "$DURATION" "$@"; }

echo "== 1. fallback only: $ENTRIES stores, ${DURATION}s of searches, $CONNECTIONS clients"
recreate_database
serve
load --entries "$ENTRIES" store-search
stop_serve

echo "== 2. through the Memory MCP server: the same"
recreate_database
rm -f "$WORK/memory.jsonl"
serve "sh $WORK/run.sh"
wait_available
load --entries "$ENTRIES" store-search
stop_serve

echo "== 3. $PENDING entries stored while the server is down, then its return"
recreate_database
rm -f "$WORK/memory.jsonl"
touch "$WORK/down"
export SPARC_MEMORY_BREAKER_OPEN_SECONDS=1
serve "sh $WORK/run.sh"
load --entries "$PENDING" store
rm -f "$WORK/down"
load wait-sync
stop_serve
echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
