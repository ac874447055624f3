#!/usr/bin/env bash
# `make bench`: release builds, then every benchmark section; the table is printed and
# written to bench-results/bench.md. Not part of `make test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/services.sh
scripts/emulators.sh start
trap 'scripts/emulators.sh stop' EXIT
target="${CARGO_TARGET_DIR:-$root/target}"

echo "== release build"
cargo build --release -p kinesis-butler -p kinesis-butler-bench --bins
for lang in python node; do
  if [ -x "bindings/$lang/build-release.sh" ]; then
    echo "== $lang package (release)"
    "bindings/$lang/build-release.sh"
  fi
done

echo "== benchmarks"
"$target/release/bench" --bin-dir "$target/release" "$@"

echo "== balancing and failover figures"
cargo test --release -p kinesis-butler --test balance -- --nocapture 2>&1 | grep -E '^FIGURE' | tee bench-results/balance.txt || true
