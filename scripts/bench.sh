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
mkdir -p bench-results

echo "== Python package (release wheel into .venv)"
venv="${KB_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.16,<2"
rm -rf "$target/wheels/bench"
(cd bindings/python && "$venv/bin/maturin" build --release --quiet --interpreter "$venv/bin/python" --out "$target/wheels/bench")
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$target"/wheels/bench/*.whl

echo "== Node package (release addon)"
(cd bindings/node && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts && npx napi build --platform --release --js native.js --dts native.d.ts)

echo "== benchmarks"
"$target/release/bench" --bin-dir "$target/release" --python "$venv/bin/python" "$@"

echo "== balancing and failover figures"
cargo test --release -p kinesis-butler --test balance -- --nocapture 2>&1 | grep -E '^FIGURE' | tee bench-results/balance.txt || true

echo "== parallelization_factor (client against the in-process scripted Butler, 10 ms handler)"
cargo run -q --release -p kinesis-butler-client --example parallel_bench 2>&1 | tee bench-results/parallel.txt
