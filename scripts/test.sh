#!/usr/bin/env bash
# Runs every test against real services: Redis, PostgreSQL and both Kinesis emulators.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/services.sh
scripts/emulators.sh start
trap 'scripts/emulators.sh stop' EXIT

echo "== Rust: unit and integration tests"
cargo test --workspace --all-targets
cargo test --workspace --doc

for lang in python node; do
  if [ -x "bindings/$lang/test.sh" ]; then
    echo "== $lang package"
    "bindings/$lang/test.sh"
  fi
done
