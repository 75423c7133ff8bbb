#!/usr/bin/env bash
# The typed TypeScript client (clients/typescript): regenerates its types from the service's
# OpenAPI document (`sparc openapi`, no service needed) with openapi-typescript, fails if they
# differ from the committed ones (run this script and commit the result after an API change),
# then type-checks and builds the hand-written wrapper. Needs node and npm; the packages go into
# clients/typescript/node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."

# The binary as the tests build it (after `cargo test --workspace`, nothing to do).
cargo test -q --workspace --no-run
client=clients/typescript
./target/debug/sparc openapi >"$client/openapi.json"
cd "$client"
npm ci --no-audit --no-fund --loglevel=error
npm run --silent generate
if ! git diff --exit-code -- src/schema.d.ts; then
    echo "clients/typescript/src/schema.d.ts is out of date: run .ci/typescript-client.sh and commit it" >&2
    exit 1
fi
npm run --silent check
npm run --silent build
echo "typescript client: types current, wrapper checked and built"
