#!/usr/bin/env bash
# Reads while another user writes, measured with `oha` (the load tool issue 26 was measured
# with): a fresh PostgreSQL database, the release `sparc serve`, user A owning TASKS tasks
# (seeded by bin/reads), then for each count, after three unreported seconds of B's writes:
# B's `POST /api/v1/tasks` by oha at WRITE_RATE/s alone (`write-only`, B's baseline); A's
# `GET /api/v1/tasks?limit=20` at READ_RATE/s alone; both at once (`mixed`). Then a second
# `sparc serve` on the same database: the mixed phase with B still writing through the first
# instance (`instances=2-idle`: what a second process costs by being there), B alone through
# the second (its baseline there), and the mixed phase with B writing through the second
# (`instances=2`). Both open loop at a fixed rate with oha's latency correction (latency from
# each request's scheduled start). Prints one line per phase and side; the phases with writes
# also print the CPU the `sparc serve` processes and the PostgreSQL server used meanwhile, in %
# of one core (the server is assumed to serve only this).
#
# Env: SECONDS (measured seconds per phase, default 10), TASKS (default 10000,100000),
# READ_RATE (1000), WRITE_RATE (500), DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/sparc_bench_oha; DROPPED and recreated). Needs `oha`
# (`cargo install oha`), psql, curl, jq.
if printenv SECONDS >/dev/null 2>&1; then DURATION=$SECONDS; else DURATION=10; fi
set -euo pipefail
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/sparc_bench_oha}
TASKS=${TASKS:-10000,100000}
READ_RATE=${READ_RATE:-1000}
WRITE_RATE=${WRITE_RATE:-500}
PORT=18493
SECOND_PORT=18494
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_database "$DATABASE_URL"
require psql cargo curl jq oha pgrep
IFS=', ' read -r -a TASK_COUNTS <<<"$TASKS"
API=http://127.0.0.1:$PORT

echo "== sparc reads while others write, by oha: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, ${DURATION}s per phase"
build_release
recreate_database
unset NATS_URL
prepare_sparc bench_oha
export SPARC_MAX_IN_FLIGHT_PER_CLIENT=0
serve() { # PORT: starts an instance; its pid in SERVED
	SPARC_LISTEN=127.0.0.1:$1 "$SPARC_BIN" serve >>"$WORK/serve-$1.log" 2>&1 &
	SERVED=$!
	BACKGROUND+=("$SERVED")
	wait_ready "http://127.0.0.1:$1/api/v1/readiness" "$WORK/serve-$1.log"
}
serve "$PORT"

token() { # USERNAME: registers (if need be) and logs in with the benchmarks' password
	local password='L0adGen-Passw0rd!'
	curl -sS "$API/api/v1/auth/register" -H 'content-type: application/json' \
		-d "$(jq -cn --arg u "$1" --arg p "$password" '{username: $u, email: ($u + "@load.test"), password: $p}')" >/dev/null
	curl -fsS "$API/api/v1/auth/login" -H 'content-type: application/json' \
		-d "$(jq -cn --arg u "$1" --arg p "$password" '{username: $u, password: $p}')" | jq -r .access_token
}

# The CPU ticks (user + system) used so far by each process named NAME: "pid ticks" lines.
ticks_of() { # NAME
	local pid stat fields
	for pid in $(pgrep -x "$1"); do
		stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
		# Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
		read -r -a fields <<<"${stat##*) }"
		echo "$pid $((fields[11] + fields[12]))"
	done
}

# "sparc N% postgres M%": the CPU each used between BEFORE_SPARC/BEFORE_PG and now, over
# DURATION seconds, in % of one core (processes started meanwhile count from zero).
cpu_since() { # BEFORE_SPARC BEFORE_PG
	local hz
	hz=$(getconf CLK_TCK)
	used() { # BEFORE NOW
		awk -v hz="$hz" -v seconds="$DURATION" 'NR == FNR { before[$1] = $2; next }
			{ total += $2 - before[$1] } END { printf "%d%%", total * 100 / hz / seconds }' \
			<(echo "$1") <(echo "$2")
	}
	echo "sparc $(used "$1" "$(ticks_of sparc)") postgres $(used "$2" "$(ticks_of postgres)")"
}

# oha at RATE/s for DURATION seconds; prints "served/s p50 p99 non-2xx" from its JSON.
load() { # RATE ARGS...
	local rate=$1
	shift
	oha --no-tui --output-format json -z "${DURATION}s" -q "$rate" --latency-correction -c 64 "$@" |
		jq -r '[.summary.requestsPerSec, .latencyPercentiles.p50 * 1000, .latencyPercentiles.p99 * 1000,
			([.statusCodeDistribution | to_entries[] | select(.key | startswith("2") | not) | .value] | add // 0)]
			| "served/s=\(.[0] | floor)  p50=\(.[1] * 100 | round / 100)ms  p99=\(.[2] * 100 | round / 100)ms  non-2xx=\(.[3])"'
}

# Once a year, like the seeded tasks (`QUIET_SCHEDULE` in bench/src/rest.rs): none is due during
# the run, so the scheduler's firing is not measured with the reads.
B_TASK='{"skill_name": "bench", "schedule_cron": "0 3 1 1 *"}'
for tasks in "${TASK_COUNTS[@]}"; do
	"$TARGET_DIR/release/reads" --api "$API" --tasks "$tasks" --seed-only
	A=$(token reads-a)
	B=$(token reads-b)
	psql "$DATABASE_URL" -q -c "VACUUM (ANALYZE)" -c "CHECKPOINT"
	list=(-H "Authorization: Bearer $A" "$API/api/v1/tasks?limit=20")
	mixed() { # INSTANCES WRITER_URL
		local writer
		load "$WRITE_RATE" -m POST -T application/json -H "Authorization: Bearer $B" \
			-d "$B_TASK" "$2/api/v1/tasks" >"$WORK/b.txt" &
		writer=$!
		local sparc_before pg_before
		sparc_before=$(ticks_of sparc)
		pg_before=$(ticks_of postgres)
		echo "tasks=$tasks instances=$1 mixed      A list   at $READ_RATE/s: $(load "$READ_RATE" "${list[@]}")"
		echo "tasks=$tasks instances=$1 mixed      cpu: $(cpu_since "$sparc_before" "$pg_before")"
		wait "$writer"
		echo "tasks=$tasks instances=$1 mixed      B create at $WRITE_RATE/s: $(cat "$WORK/b.txt")"
	}
	write_only() { # INSTANCES WRITER_URL
		local sparc_before pg_before
		sparc_before=$(ticks_of sparc)
		pg_before=$(ticks_of postgres)
		echo "tasks=$tasks instances=$1 write-only B create at $WRITE_RATE/s: $(load "$WRITE_RATE" \
			-m POST -T application/json -H "Authorization: Bearer $B" -d "$B_TASK" "$2/api/v1/tasks")"
		echo "tasks=$tasks instances=$1 write-only cpu: $(cpu_since "$sparc_before" "$pg_before")"
	}
	# Unreported: the first seconds of writes after the seed and the checkpoint pay for
	# autovacuum and full-page writes, which would make B's baseline slower than it is.
	DURATION=3 load "$WRITE_RATE" -m POST -T application/json -H "Authorization: Bearer $B" \
		-d "$B_TASK" "$API/api/v1/tasks" >/dev/null
	write_only 1 "$API"
	echo "tasks=$tasks instances=1 read-only  A list   at $READ_RATE/s: $(load "$READ_RATE" "${list[@]}")"
	mixed 1 "$API"
	# The second instance runs only for its phase: idle, its loops would still share the cores.
	serve "$SECOND_PORT"
	# B through the first instance while the second runs beside it: what a second process costs
	# by being there, apart from taking B's writes.
	mixed 2-idle "$API"
	# B's baseline through the second instance, then with A's reads through the first.
	write_only 2 "http://127.0.0.1:$SECOND_PORT"
	mixed 2 "http://127.0.0.1:$SECOND_PORT"
	kill "$SERVED"
	wait "$SERVED" 2>/dev/null || true
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
