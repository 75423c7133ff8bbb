#!/usr/bin/env bash
# Scheduling benchmark: runs from schedule to agent and back, on PostgreSQL, release build.
#   Two `sparc serve` processes (each with its scheduler) share a fresh database; TASKS tasks
#   (bench/src/bin/scheduling.rs) are all due in the same minute; two `sparc worker` processes
#   (WORKER_CONCURRENCY jobs at once each, one per serve) run the skill as `true`.
#   Measured from the log once every run has finished, by when each event was stored:
#     fire latency   slot -> ExecutionStarted stored (p50, p99, max)
#     claim latency  ExecutionStarted stored -> ExecutionClaimed stored (p50, p99)
#     end to end     runs finished per second, from the slot to the last finish
# Env: TASKS (10000), WORKER_CONCURRENCY (16), DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/sparc_bench_scheduling; DROPPED and recreated).
set -euo pipefail
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/sparc_bench_scheduling}
TASKS=${TASKS:-10000}
WORKER_CONCURRENCY=${WORKER_CONCURRENCY:-16}
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_database "$DATABASE_URL"
require psql cargo curl jq

echo "== sparc scheduling benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
echo "   load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
build_release
recreate_database
export DATABASE_URL RUST_LOG=warn
export SPARC_JWT_SECRET="bench-$(date +%s%N)-not-a-real-secret-at-all"
export SPARC_RATE_LIMIT_PER_MINUTE=0 SPARC_AUTH_RATE_LIMIT_PER_MINUTE=0
export SPARC_ACTIVITY_RATE_LIMIT_PER_MINUTE=0 SPARC_AGENT_CREATE_RATE_LIMIT_PER_MINUTE=0
export SPARC_MAX_TASKS_PER_USER=0 SPARC_MAX_AGENTS_PER_USER=0
WORKER_PASSWORD="bench-$(date +%s%N)-Aa1!"
"$SPARC_BIN" migrate >/dev/null
SPARC_PASSWORD=$WORKER_PASSWORD "$SPARC_BIN" user create --username bench-worker \
	--email bench-worker@example.com --role agent >/dev/null

PORTS=(18481 18482)
for port in "${PORTS[@]}"; do
	SPARC_LISTEN=127.0.0.1:$port "$SPARC_BIN" serve >"$WORK/serve-$port.log" 2>&1 &
	BACKGROUND+=("$!")
done
for port in "${PORTS[@]}"; do wait_ready "http://127.0.0.1:$port/api/v1/readiness" "$WORK/serve-$port.log"; done
wait_login "http://127.0.0.1:${PORTS[0]}" bench-worker "$WORKER_PASSWORD"

# The first whole minute at least 40 s away: time to seed before it comes due.
SLOT=$(( ($(date +%s) + 40 + 59) / 60 * 60 ))
SLOT_TEXT=$(date -u -d "@$SLOT" +%Y-%m-%dT%H:%M:00Z)
echo "== seeding $TASKS tasks due at $SLOT_TEXT"
"$TARGET_DIR/release/scheduling" --tasks "$TASKS" --slot "$SLOT_TEXT"

for n in 0 1; do
	cat >"$WORK/worker-$n.toml" <<TOML
api_url = "http://127.0.0.1:${PORTS[$n]}"
username = "bench-worker"
name = "bench-worker-$n"
concurrency = $WORKER_CONCURRENCY
poll_wait_seconds = 30

[skills.noop]
command = ["true"]
TOML
	SPARC_WORKER_PASSWORD=$WORKER_PASSWORD "$SPARC_BIN" worker --config "$WORK/worker-$n.toml" \
		>"$WORK/worker-$n.log" 2>&1 &
	BACKGROUND+=("$!")
done

sql() { psql "$DATABASE_URL" -qtAX -v ON_ERROR_STOP=1 -c "$1"; }
echo "== waiting for the slot ($(( SLOT - $(date +%s) )) s) and for $TASKS runs to finish"
for _ in $(seq 1 900); do
	finished=$(sql "SELECT count(*) FROM events WHERE aggregate_type = 'Execution'
		AND event_type = 'ExecutionFinished'")
	[ "$finished" -ge "$TASKS" ] && break
	sleep 1
done
[ "$finished" -ge "$TASKS" ] || { tail -5 "$WORK"/*.log >&2; echo "only $finished runs finished" >&2; exit 1; }

echo "== results ($TASKS tasks, 2 schedulers, 2 workers x $WORKER_CONCURRENCY)"
sql "
WITH started AS (
  SELECT aggregate_id, recorded_at AS at,
         (payload->'ExecutionStarted'->>'scheduled_for')::timestamptz AS slot
    FROM events WHERE aggregate_type = 'Execution' AND event_type = 'ExecutionStarted'),
claimed AS (
  SELECT aggregate_id, recorded_at AS at
    FROM events WHERE aggregate_type = 'Execution' AND event_type = 'ExecutionClaimed'),
finished AS (
  SELECT aggregate_id, recorded_at AS at,
         payload->'ExecutionFinished'->>'status' AS status
    FROM events WHERE aggregate_type = 'Execution' AND event_type = 'ExecutionFinished'),
fire AS (SELECT extract(epoch FROM at - slot) * 1000 AS ms FROM started),
claim AS (SELECT extract(epoch FROM c.at - s.at) * 1000 AS ms
            FROM claimed c JOIN started s USING (aggregate_id))
SELECT format('runs started %s, claimed %s, finished %s (success %s)',
         (SELECT count(*) FROM started), (SELECT count(*) FROM claimed),
         (SELECT count(*) FROM finished), (SELECT count(*) FROM finished WHERE status = 'success'))
UNION ALL
SELECT format('fire latency   p50 %s ms  p99 %s ms  max %s ms',
         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(max(ms)::numeric, 1)) FROM fire
UNION ALL
SELECT format('claim latency  p50 %s ms  p99 %s ms  max %s ms',
         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(max(ms)::numeric, 1)) FROM claim
UNION ALL
SELECT format('end to end     %s runs/s (%s runs from the slot to the last finish in %s s)',
         round((count(*) / extract(epoch FROM max(f.at) - min(s.slot)))::numeric, 1),
         count(*), round(extract(epoch FROM max(f.at) - min(s.slot))::numeric, 1))
  FROM finished f JOIN started s USING (aggregate_id);
"
echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
