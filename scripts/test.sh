#!/usr/bin/env bash
# Runs every test against real services: Redis, PostgreSQL and both Kinesis emulators.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/services.sh
scripts/browser.sh
scripts/emulators.sh start
trap 'scripts/emulators.sh stop' EXIT

# The KPL tests encode aggregates with the reference encoder from PyPI.
venv="${KB_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "aws-kinesis-agg==1.2.3" "six>=1.16"

echo "== Rust: unit and integration tests"
cargo test --workspace --all-targets
cargo test --workspace --doc

for lang in python node; do
  if [ -x "bindings/$lang/test.sh" ]; then
    echo "== $lang package"
    "bindings/$lang/test.sh"
  fi
done
