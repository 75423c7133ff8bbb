#!/usr/bin/env bash
# Generated requests against the OpenAPI document: runs `sparc serve` on a fresh PostgreSQL
# database, signs in a user and an admin, lets schemathesis send requests to every operation as
# each of them, then checks that the service is still whole: every consumer of the log live,
# nothing parked, the hash chain verifying.
#
# Fails on any 5xx answer, any answer the document does not declare (status, content type,
# schema), or an unhealthy pipeline afterwards. Needs PostgreSQL at 127.0.0.1:5432, python3
# with venv, curl, jq and psql; builds the debug `sparc` binary if it is not up to date and
# installs schemathesis into a virtualenv kept under ~/.cache/sparc (SPARC_CI_CACHE), reused by
# later runs on the same machine.
#
#   .ci/schemathesis.sh [MAX_EXAMPLES_PER_OPERATION]   (default 50, which `.ci/run` uses)
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${1:-50}"
schemathesis_version=4.32.5
venv="${SPARC_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sparc}/schemathesis-$schemathesis_version"
port=18090
base="http://127.0.0.1:$port"
database="sparc_schemathesis_$(date +%s)_$$"
admin_url="postgres://postgres@127.0.0.1:5432/postgres"
work="$(mktemp -d)"
server_pid=""

cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    psql "$admin_url" -qc "DROP DATABASE IF EXISTS $database" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

if [[ ! -x "$venv/bin/st" ]]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==$schemathesis_version"
fi
# Up to date after `cargo test --workspace` (then this takes a moment); never a stale binary.
cargo build -p sparc --quiet

psql "$admin_url" -qc "CREATE DATABASE $database" >/dev/null
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database?sslmode=disable"
export SPARC_JWT_SECRET="schemathesis-signing-key-that-is-long-enough-0123456789"
export SPARC_RATE_LIMIT_PER_MINUTE=0 SPARC_AUTH_RATE_LIMIT_PER_MINUTE=0
export SPARC_ACTIVITY_RATE_LIMIT_PER_MINUTE=0 SPARC_AGENT_CREATE_RATE_LIMIT_PER_MINUTE=0
export SPARC_LOG_FORMAT=json RUST_LOG=warn

target/debug/sparc migrate
target/debug/sparc serve --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    curl -fsS "$base/api/v1/readiness" >/dev/null 2>&1 && break
    sleep 0.1
done

password='Schemathesis1'
SPARC_PASSWORD="$password" target/debug/sparc user create \
    --username st-admin --email st-admin@example.com --role admin >/dev/null
curl -fsS -H 'Content-Type: application/json' "$base/api/v1/auth/register" \
    -d "{\"username\":\"st-user\",\"email\":\"st-user@example.com\",\"password\":\"$password\"}" >/dev/null
token_of() {
    for _ in $(seq 1 100); do
        local answer
        answer="$(curl -sS -H 'Content-Type: application/json' "$base/api/v1/auth/login" \
            -d "{\"username\":\"$1\",\"password\":\"$password\"}")"
        if jq -e .access_token <<<"$answer" >/dev/null 2>&1; then
            jq -r .access_token <<<"$answer"
            return
        fi
        sleep 0.1
    done
    echo "could not sign in $1" >&2
    exit 1
}
user_token="$(token_of st-user)"
admin_token="$(token_of st-admin)"

status=0
total=0
for who in user admin; do
    token_var="${who}_token"
    echo "schemathesis as the $who (up to $examples examples per operation)"
    # Left out: the three operations that can end the session the run signs in with. Logout
    # ends the caller's own session whenever the refresh token it is given is not one of the
    # caller's, `DELETE /sessions` ends them all, and `DELETE /sessions/{id}` would be given
    # the run's own session id, which `GET /sessions` lists (schemathesis reuses the values
    # answers carry). Changing the password stays in: without the current password it cannot
    # succeed, and even then it keeps the caller's session.
    # One worker: with two, CPython 3.11's AST construction (hypothesis parses the source of
    # its filters) is not thread-safe and fails a run now and then with "AST constructor
    # recursion depth mismatch"; the run takes about as long either way.
    # Run from the scratch directory, where schemathesis leaves its cache (`.schemathesis/`).
    # For the admin, also the jobs long poll: given an agent that exists (the admin can make
    # one), it holds each request up to its `wait`, 30 s, past the request timeout and for
    # minutes in all; crates/sparc/tests/jobs.rs covers it (the user's run still gets its 403s).
    extra=()
    [ "$who" = admin ] && extra=(--exclude-name 'GET /api/v1/agents/{id}/jobs')
    (cd "$work" && "$venv/bin/st" run "$base/api/openapi.json" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --header "Authorization: Bearer ${!token_var}" \
        --exclude-name 'POST /api/v1/auth/logout' \
        --exclude-name 'DELETE /api/v1/auth/sessions' \
        --exclude-name 'DELETE /api/v1/auth/sessions/{id}' "${extra[@]}" \
        --phases examples,coverage,fuzzing \
        --max-examples "$examples" --workers 1 --request-timeout 15 \
        --seed 2026 --no-color) | tee "$work/run-$who.log" || status=1
    generated="$(grep -oE '[0-9]+ generated' "$work/run-$who.log" | tail -1 | grep -oE '[0-9]+' || echo 0)"
    total=$((total + generated))
done

echo "schemathesis sent $total generated requests in all"
if ((total < 1000)); then
    echo "fewer than 1,000 generated requests"
    status=1
fi
echo "afterwards: every consumer live, nothing parked, the log verifies"
for _ in $(seq 1 100); do
    consumers="$(curl -fsS -H "Authorization: Bearer $admin_token" "$base/api/v1/admin/projections")"
    jq -e 'all(.[]; .lag_events == 0)' <<<"$consumers" >/dev/null && break
    sleep 0.1
done
echo "$consumers" | jq -c '.[] | {name, status, lag_events, parked}'
jq -e 'all(.[]; .status == "live" and .parked == 0 and .lag_events == 0)' <<<"$consumers" >/dev/null \
    || { echo "a consumer is not live"; status=1; }
verify="$(curl -fsS -H "Authorization: Bearer $admin_token" "$base/api/v1/audit/verify")"
echo "audit verify: $verify"
jq -e '.ok == true' <<<"$verify" >/dev/null || { echo "the log does not verify"; status=1; }
if grep -q '"level":"ERROR"' "$work/server.log"; then
    echo "the service logged errors:"
    grep '"level":"ERROR"' "$work/server.log" | head -20
    status=1
fi
exit "$status"
