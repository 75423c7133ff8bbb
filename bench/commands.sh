#!/usr/bin/env bash
# Command-path benchmark of sparc against raw PostgreSQL inserts, in one run on one machine.
#
#   (a) pgbench: one single-row INSERT per transaction into `pgbench_events`, a table shaped
#       like the event log (`migrations/postgres/0001_event_log.sql`), at 16 and 64 clients;
#   (b) the release `commands` binary: `CommandBus::create::<Task>(Schedule)` at 16 and 64
#       concurrent writers (pool sized to the writers);
#   (c) a summary: pgbench TPS, CQRS commands/s, p50/p99, CQRS/pgbench ratio, target met?
#   (d) over HTTP (skip with HTTP=0): the release `sparc serve` on a second database
#       (<name>_http, also recreated) and the release `http` binary: POST /api/v1/tasks over
#       HTTP_CONNECTIONS (64) connections at a fixed rate of 0.4 x the pgbench TPS at 64
#       clients (open loop: its p50/p99) and at saturation (its requests/s), then
#       GET /api/v1/tasks?limit=20 for a user with 10,000 tasks at 1,000 req/s and at
#       saturation.
#
# Env: SECONDS (measured seconds per step, default 10), DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/sparc_bench; the database is DROPPED and recreated),
# WRITERS (default 16,64), HTTP (default 1), HTTP_CONNECTIONS (default 64). Works from any
# directory.
#
# Targets: at 64 writers, CQRS commands/s >= 0.5 x pgbench TPS and p99 <= 20 ms (DESIGN.md);
# HTTP create at 64 connections carries 0.4 x pgbench TPS with p99 <= 20 ms (and reaches at
# least that rate at saturation); the list p99 <= 5 ms at 1,000 req/s and >= 10,000 req/s at
# saturation.

# `SECONDS` is a bash builtin counter: read the caller's value before anything else, and
# only if the caller exported one.
if printenv SECONDS >/dev/null 2>&1; then DURATION=$SECONDS; else DURATION=10; fi
set -euo pipefail

DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/sparc_bench}
WRITERS=${WRITERS:-16,64}
WARMUP=2
TARGET_RATIO=0.5
TARGET_P99_MS=20
TARGET_WRITERS=64
HTTP=${HTTP:-1}
HTTP_CONNECTIONS=${HTTP_CONNECTIONS:-64}
HTTP_TARGET_RATIO=0.4
HTTP_LISTEN=127.0.0.1:18480

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BIN=$TARGET_DIR/release/commands
HTTP_BIN=$TARGET_DIR/release/http
bench_database "$DATABASE_URL"
IFS=', ' read -r -a WRITER_COUNTS <<<"$WRITERS"

require psql pgbench cargo jq


echo "== sparc command benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, ${DURATION}s per step"
echo "   database ${DB_NAME} (recreated), PostgreSQL $(psql "$ADMIN_URL" -Atc 'SHOW server_version')"
echo "   load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a) (other work on the machine skews every figure)"

build_release

recreate_database

# Same columns, types, defaults, primary key, identity, xid8 and indexes as `events` in
# migrations/postgres/0001_event_log.sql (checked against it after the CQRS run).
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE pgbench_events
(
    aggregate_type  text                         NOT NULL,
    aggregate_id    text                         NOT NULL,
    sequence        bigint CHECK (sequence >= 0) NOT NULL,
    event_type      text                         NOT NULL,
    event_version   text                         NOT NULL,
    payload         json                         NOT NULL,
    metadata        json                         NOT NULL,
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id  xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz                  NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE UNIQUE INDEX pgbench_events_global_position ON pgbench_events (global_position);
CREATE INDEX pgbench_events_transaction_id_global_position
    ON pgbench_events (transaction_id, global_position);
SQL

# One event row per transaction, with a payload and metadata of the size the CQRS run writes
# (a TaskScheduled event and the metadata of an HTTP request). The aggregate id is unique:
# the client id plus a random 63-bit number.
cat >"$WORK/insert.sql" <<'SQL'
\set r random(1, 9000000000000000000)
INSERT INTO pgbench_events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
VALUES ('Task', 'pgbench-' || :client_id || '-' || :r, 1, 'TaskScheduled', '1.0',
 '{"TaskScheduled": {"at": "2026-01-01T10:52:18.630211006Z", "params": {"run": 1, "paths": ["crates/", "projections/"], "branch": "main", "repository": "git@github.com:example/sparc.git", "max_findings": 50}, "status": "pending", "task_id": "01a221c8-d146-7775-b298-f0f277495046", "user_id": "01a221c8-d146-7775-b298-f0f01a8a4c7c", "timezone": "Europe/Paris", "project_id": "01a221c8-d146-7775-b298-f0f1cc3dd343", "skill_name": "code-review", "next_run_at": "2026-01-05T08:00:00Z", "schedule_cron": "*/15 9-18 * * 1-5"}}',
 '{"ip": "10.0.0.2", "actor": "01a221c8-d146-7775-b298-f0f01a8a4c7c", "request_id": "01a221c8-d146-7775-b298-f0f35be33f55", "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "recorded_at": "2026-01-01T10:52:18.630209579Z", "causation_id": "01a221c8-d146-7775-b298-f0f35be33f55", "correlation_id": "01a221c8-d146-7775-b298-f0f35be33f55"}');
SQL

echo "== (a) pgbench: single-row INSERT into pgbench_events (-j 2 -n, ${WARMUP}s warm-up)"
pgbench -n -c "${WRITER_COUNTS[0]}" -j 2 -T "$WARMUP" -f "$WORK/insert.sql" "$DATABASE_URL" >/dev/null 2>&1 || true
declare -A PG_TPS PG_LAT
for n in "${WRITER_COUNTS[@]}"; do
	# -l: one line per transaction (its latency in µs is the third field), for the p99.
	out=$(cd "$WORK" && pgbench -n -c "$n" -j 2 -T "$DURATION" -l --log-prefix="pgbench_$n" \
		-f "$WORK/insert.sql" "$DATABASE_URL" 2>&1) || {
		echo "$out" >&2; echo "pgbench failed" >&2; exit 1
	}
	PG_TPS[$n]=$(awk '/^tps = /{print $3; exit}' <<<"$out")
	PG_LAT[$n]=$(awk '/^latency average = /{print $4; exit}' <<<"$out")
	failed=$(awk '/^number of failed transactions: /{print $5; exit}' <<<"$out")
	p99=$(cat "$WORK"/pgbench_"$n".* | awk '{print $3}' | sort -n |
		awk '{v[NR] = $1} END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f", v[i] / 1000 }')
	rm -f "$WORK"/pgbench_"$n".*
	printf 'pgbench insert    clients=%-3s  tps=%.0f  latency avg=%sms  p99=%sms  failed=%s\n' \
		"$n" "${PG_TPS[$n]}" "${PG_LAT[$n]}" "$p99" "${failed:-0}"
done

echo "== (b) CQRS: CommandBus::create::<Task>(Schedule), ${WARMUP}s warm-up"
"$BIN" --database-url "$DATABASE_URL" --writers "$WRITERS" --seconds "$DURATION" \
	--warmup "$WARMUP" --json 2>&1 >"$WORK/cqrs.jsonl"

# The baseline table must stay shaped like the real one.
shape() {
	psql "$DATABASE_URL" -At -c "
	  SELECT string_agg(column_name || ' ' || data_type || ' ' || is_nullable || ' ' ||
	                    is_identity || ' ' || coalesce(column_default, ''), ', ' ORDER BY ordinal_position)
	  FROM information_schema.columns WHERE table_name = '$1'" \
		-c "SELECT string_agg(replace(indexdef, '$1', 'T'), '; ' ORDER BY indexdef)
	  FROM pg_indexes WHERE tablename = '$1'"
}
if [[ "$(shape events)" != "$(shape pgbench_events | sed 's/pgbench_events/events/g')" ]]; then
	echo "WARNING: pgbench_events no longer has the shape of events (see migrations/postgres)" >&2
fi

echo "== (c) summary (target at ${TARGET_WRITERS} writers: CQRS/pgbench >= ${TARGET_RATIO}, p99 <= ${TARGET_P99_MS} ms)"
printf '%-8s %12s %12s %9s %9s %9s %7s %8s\n' writers pgbench_tps cqrs_cmd/s p50_ms p99_ms ratio errors target
verdict="NOT MEASURED (no ${TARGET_WRITERS}-writer run)"
for n in "${WRITER_COUNTS[@]}"; do
	read -r cps p50 p99 errors < <(jq -r --argjson n "$n" \
		'select(.writers == $n) | "\(.commands_per_s) \(.p50_ms) \(.p99_ms) \(.errors)"' "$WORK/cqrs.jsonl")
	ratio=$(awk -v c="$cps" -v t="${PG_TPS[$n]}" 'BEGIN { printf "%.2f", (t > 0 ? c / t : 0) }')
	met=$(awk -v r="$ratio" -v p="$p99" -v rt="$TARGET_RATIO" -v pt="$TARGET_P99_MS" \
		'BEGIN { print (r >= rt && p <= pt) ? "met" : "MISSED" }')
	printf '%-8s %12.0f %12.0f %9.2f %9.2f %9s %7s %8s\n' "$n" "${PG_TPS[$n]}" "$cps" "$p50" "$p99" "$ratio" "$errors" "$met"
	if [[ $n == "$TARGET_WRITERS" ]]; then
		verdict="$met (ratio $ratio, p99 ${p99} ms)"
	fi
done
echo "target at ${TARGET_WRITERS} writers: $verdict"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"

[[ $HTTP == 0 ]] && exit 0

# Steps (a) and (b) left ~10^5 fresh rows and their dirty pages behind: vacuum and write them
# out now, or autovacuum and the checkpointer do it (CPU and I/O on these 2 cores) in the middle
# of the HTTP steps, which then measure that too.
echo "== vacuuming and checkpointing what (a) and (b) wrote, so it stays out of the HTTP steps"
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -c "VACUUM (ANALYZE)" -c "CHECKPOINT"

HTTP_DB=${DB_NAME}_http
HTTP_DATABASE_URL=$DB_SERVER/$HTTP_DB$DB_QUERY
echo "== (d) HTTP: sparc serve on database $HTTP_DB (recreated), $HTTP_CONNECTIONS connections, ${WARMUP}s warm-up per phase"
recreate_database "$HTTP_DB"
# Rate limits and the task quota out of the way (one user creates tens of thousands of tasks);
# warnings only (no per-request log lines); the in-process bus.
env -u NATS_URL DATABASE_URL="$HTTP_DATABASE_URL" SPARC_LISTEN="$HTTP_LISTEN" \
	SPARC_JWT_SECRET="bench-$(date +%s%N)-not-a-real-secret" RUST_LOG=warn \
	SPARC_RATE_LIMIT_PER_MINUTE=1000000000 SPARC_AUTH_RATE_LIMIT_PER_MINUTE=1000000000 \
	SPARC_MAX_TASKS_PER_USER=0 \
	"$SPARC_BIN" serve >"$WORK/serve.log" 2>&1 &
BACKGROUND+=($!)
wait_ready "http://$HTTP_LISTEN/api/v1/readiness" "$WORK/serve.log"
pg_tps=${PG_TPS[$HTTP_CONNECTIONS]:-}
# The fixed create rate: the target ratio x the pgbench TPS at as many clients (none without
# that run).
create_rate=0
[[ -n $pg_tps ]] && create_rate=$(awk -v t="$pg_tps" -v r="$HTTP_TARGET_RATIO" 'BEGIN { printf "%d", t * r + 0.999 }')
"$HTTP_BIN" --api "http://$HTTP_LISTEN" --connections "$HTTP_CONNECTIONS" --seconds "$DURATION" \
	--warmup "$WARMUP" --create-rate "$create_rate" --json 2>&1 >"$WORK/http.jsonl"

echo "== (e) HTTP summary (targets: create carries 0.4 x pgbench at 64 with p99 <= 20 ms and reaches it at saturation; list p99 <= 5 ms at 1,000 req/s, >= 10,000 req/s at saturation)"
while read -r name rps p50 p99 errors; do
	verdict=
	case $name in
	create*)
		if [[ -n $pg_tps ]]; then
			ratio=$(awk -v c="$rps" -v t="$pg_tps" 'BEGIN { printf "%.2f", c / t }')
			# At the fixed rate the rate must be kept up (within 1 %) at the target p99; at
			# saturation the ratio must reach the target (its latency is the connections' queue).
			case $name in
			*rate*) met=$(awk -v c="$rps" -v r="$create_rate" -v p="$p99" -v pt="$TARGET_P99_MS" 'BEGIN { print (c >= 0.99 * r && p <= pt) ? "met" : "MISSED" }') ;;
			*) met=$(awk -v r="$ratio" -v rt="$HTTP_TARGET_RATIO" 'BEGIN { print (r >= rt) ? "met" : "MISSED" }') ;;
			esac
			verdict="pgbench=$(printf %.0f "$pg_tps") ratio=$ratio $met"
		else
			verdict="(no pgbench run at $HTTP_CONNECTIONS clients to compare with)"
		fi ;;
	list*rate*) verdict=$(awk -v p="$p99" 'BEGIN { print (p <= 5) ? "met" : "MISSED" }') ;;
	list*saturation) verdict=$(awk -v r="$rps" 'BEGIN { print (r >= 10000) ? "met" : "MISSED" }') ;;
	esac
	printf '%-28s req/s=%-8.0f p50=%-7.2f p99=%-7.2f errors=%-4s %s\n' "$name" "$rps" "$p50" "$p99" "$errors" "$verdict"
done < <(jq -r 'select(.benchmark) | "\(.benchmark | sub("^http "; "") | gsub(" "; "_")) \(.commands_per_s) \(.p50_ms) \(.p99_ms) \(.errors)"' "$WORK/http.jsonl")
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"
