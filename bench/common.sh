# What the benchmark scripts share; sourced by them (after `set -euo pipefail`), never run.
#
# Sets BENCH_DIR, ROOT, TARGET_DIR, SPARC_BIN and WORK (a temporary directory), and on exit
# stops every process whose pid the script added to BACKGROUND and removes WORK. Offers:
#   bench_database URL     checks a postgres:// URL and sets DB_NAME, DB_SERVER (the URL up to
#                          the database name), DB_QUERY (`?…` or empty) and ADMIN_URL (the
#                          same server's `postgres` database, for DROP and CREATE)
#   require TOOL…          exits 2 unless every TOOL is on PATH
#   build_release          cargo build --release -p sparc-bench -p sparc (no-op when fresh)
#   recreate_database [NAME]  drops NAME (default DB_NAME) if it exists and creates it empty
#   wait_ready URL LOG     waits up to 20 s for URL to answer 2xx, else prints LOG and exits 1
#   prepare_sparc PREFIX   for the WebSocket benchmarks: migrates DATABASE_URL, exports what the
#                          sparc processes need (NATS_URL, a fresh signing key, a NATS
#                          namespace PREFIX_<time> of their own, warnings only, rate limits
#                          and connection caps off) and creates the admin `wsadmin` with
#                          password ADMIN_PASSWORD
#   wait_login API USER PASSWORD
#                          waits up to 20 s until USER can log in at API (an account made by
#                          `sparc user create` reaches the users read model moments later)

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SPARC_BIN=$TARGET_DIR/release/sparc

bench_database() {
	case $1 in
	postgres://* | postgresql://*) ;;
	*) echo "DATABASE_URL must be a postgres:// URL" >&2; exit 2 ;;
	esac
	local base=${1%%\?*}
	DB_QUERY=${1#"$base"}
	DB_NAME=${base##*/}
	DB_SERVER=${base%/*}
	ADMIN_URL=$DB_SERVER/postgres$DB_QUERY
	[[ $DB_NAME =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo "unsupported database name: $DB_NAME" >&2; exit 2; }
}

require() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
	done
}

build_release() {
	echo "== building the release binaries (cargo build --release -p sparc-bench -p sparc)"
	cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p sparc-bench -p sparc
}

recreate_database() { # [NAME, default DB_NAME]
	local name=${1:-$DB_NAME}
	echo "== (re)creating database $name"
	psql "$ADMIN_URL" -q -v ON_ERROR_STOP=1 \
		-c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" \
		-c "CREATE DATABASE \"$name\""
}

wait_ready() {
	for _ in $(seq 1 100); do
		curl -fsS "$1" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	cat "$2" >&2
	echo "not ready: $1" >&2
	exit 1
}

prepare_sparc() {
	ADMIN_PASSWORD="bench-$(date +%s%N)-Aa1!"
	export DATABASE_URL NATS_URL
	export SPARC_JWT_SECRET="bench-$(date +%s%N)-not-a-real-secret-at-all"
	export SPARC_NATS_NAMESPACE="$1_$(date +%s)"
	export RUST_LOG=warn
	export SPARC_RATE_LIMIT_PER_MINUTE=0 SPARC_AUTH_RATE_LIMIT_PER_MINUTE=0
	export SPARC_ACTIVITY_RATE_LIMIT_PER_MINUTE=0 SPARC_AGENT_CREATE_RATE_LIMIT_PER_MINUTE=0
	# Hundreds of connections per user, ~17,000 per gateway: connection caps off, like rate limits.
	export SPARC_WEBSOCKET_CONNECTIONS_PER_USER=0 SPARC_WEBSOCKET_MAX_CONNECTIONS=0 SPARC_MAX_CONNECTIONS=0
	# A few users write thousands of tasks and log in from every load process: quotas off too.
	export SPARC_MAX_TASKS_PER_USER=0 SPARC_MAX_PROJECTS_PER_USER=0 SPARC_MAX_AGENTS_PER_USER=0
	export SPARC_MAX_SESSIONS_PER_USER=0
	"$SPARC_BIN" migrate >/dev/null
	SPARC_PASSWORD=$ADMIN_PASSWORD "$SPARC_BIN" user create --username wsadmin \
		--email wsadmin@example.com --role admin >/dev/null
}

wait_login() {
	local body
	body=$(jq -cn --arg u "$2" --arg p "$3" '{username: $u, password: $p}')
	for _ in $(seq 1 100); do
		curl -fsS "$1/api/v1/auth/login" -H 'content-type: application/json' -d "$body" \
			>/dev/null 2>&1 && return 0
		sleep 0.2
	done
	echo "$2 cannot log in at $1" >&2
	exit 1
}

WORK=$(mktemp -d)
BACKGROUND=()
stop_background() {
	local pid
	for pid in "${BACKGROUND[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${BACKGROUND[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap stop_background EXIT
