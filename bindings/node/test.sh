#!/usr/bin/env bash
# Builds the npm package the way a user gets it (napi build of the addon, npm pack,
# npm install of the tarball into a scratch project) and runs its tests there with
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
profile="${KB_PROFILE:-debug}"
cd "$root"

step() { printf '== node: %s\n' "$*"; }
now() { date +%s; }

step "installing the build tools (npm ci)"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

if [ -z "${KB_SKIP_SERVER_BUILD:-}" ]; then
  step "building the server binary used by the tests"
  cargo build -q -p kinesis-butler
fi

step "building the addon ($profile)"
start=$(now)
flags=(--platform --js native.js --dts native.d.ts)
[ "$profile" = release ] && flags+=(--release)
(cd "$here" && npx napi build "${flags[@]}")
step "built in $(( $(now) - start )) s"

step "type-checking the TypeScript definitions (tsc)"
(cd "$here" && npx tsc -p types-test)

step "packing and installing into a scratch project"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
tarball=$(cd "$here" && npm pack --silent --pack-destination "$scratch")
(
  cd "$scratch"
  echo '{ "name": "kinesis-butler-scratch", "private": true }' > package.json
  npm install --no-audit --no-fund --loglevel=error "./$tarball"
)
cp -r "$here/test" "$scratch/test"
mkdir -p "$scratch/examples" && cp "$root/examples/node/processor.js" "$scratch/examples/"

scripts/emulators.sh start kinesalite
step "node --test"
cd "$scratch"
KINESIS_BUTLER_LOG="${KINESIS_BUTLER_LOG:-off}" KB_ROOT="$root" KB_BIN_DIR="$target/debug" node --test ${NODE_TEST_ARGS:-} test/*.test.js test/*.test.mjs
