#!/usr/bin/env bash
# Installs the npm package exactly as a user does from a checkout, into a fresh npm
# project: `npm install <checkout>/bindings/node`, whose install step builds the native
# addon with cargo (no prebuilt one is there), then runs its tests there with
# `node --test`, against a real kinesis-butler server and the kinesalite emulator
# (started if not running). Also type-checks the TypeScript definitions (tsc).
#
#   bindings/node/test.sh                 debug build of the addon (fast to build)
#   KB_PROFILE=release bindings/node/test.sh
#
# Env: CARGO_TARGET_DIR (build outputs), KB_SKIP_SERVER_BUILD=1 (use the built server), NODE_TEST_ARGS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
export CARGO_TARGET_DIR="$target"
profile="${KB_PROFILE:-debug}"
cd "$root"

step() { printf '== node: %s\n' "$*"; }
now() { date +%s; }

step "installing the type-checking tools (npm ci)"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts)

if [ -z "${KB_SKIP_SERVER_BUILD:-}" ]; then
  step "building the server binary used by the tests"
  cargo build -q -p kinesis-butler
fi

step "type-checking the TypeScript definitions (tsc)"
(cd "$here" && npx tsc -p types-test)

# No prebuilt addon: the install step must build it, as on a fresh machine.
step "npm install $here into a fresh project (builds the addon: $profile)"
rm -f "$here"/*.node
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
start=$(now)
(
  cd "$scratch"
  echo '{ "name": "kinesis-butler-scratch", "private": true }' > package.json
  KINESIS_BUTLER_BUILD_PROFILE="$profile" npm install --no-audit --no-fund --loglevel=error "$here"
  node -e "require('kinesis-butler'); require('kinesis-butler/testing')"
)
step "installed in $(( $(now) - start )) s"
cp -r "$here/test" "$scratch/test"
mkdir -p "$scratch/examples" && cp "$root/examples/node/processor.js" "$scratch/examples/"

scripts/emulators.sh start kinesalite
step "node --test"
cd "$scratch"
KINESIS_BUTLER_LOG="${KINESIS_BUTLER_LOG:-off}" KB_ROOT="$root" KB_BIN_DIR="$target/debug" node --test ${NODE_TEST_ARGS:-} test/*.test.js test/*.test.mjs
