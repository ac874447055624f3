#!/usr/bin/env bash
# Builds the Python package the way a user's install does (maturin builds the abi3 wheel,
# pip installs it into a virtualenv) and runs its tests against a real kinesis-butler
# server and the kinesalite emulator (started if not running).
#
#   bindings/python/test.sh            debug build of the extension (fast to build)
#   KB_PROFILE=release bindings/python/test.sh
#
# Env: CARGO_TARGET_DIR (build outputs), KB_SKIP_SERVER_BUILD=1 (use the built server), KB_VENV (default: <repo>/.venv), PYTEST_ARGS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
venv="${KB_VENV:-$root/.venv}"
profile="${KB_PROFILE:-debug}"
cd "$root"

step() { printf '== python: %s\n' "$*"; }
now() { date +%s; }

if [ ! -x "$venv/bin/python" ]; then
  step "creating the virtualenv $venv"
  python3 -m venv "$venv"
fi
step "installing maturin, pytest, mypy"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.16,<2" "pytest>=7" mypy

if [ -z "${KB_SKIP_SERVER_BUILD:-}" ]; then
  step "building the server binary used by the tests"
  cargo build -q -p kinesis-butler
fi

step "building the wheel ($profile)"
start=$(now)
wheels="$target/wheels/python"
rm -rf "$wheels"
flags=()
[ "$profile" = release ] && flags+=(--release)
(cd "$here" && "$venv/bin/maturin" build "${flags[@]}" --interpreter "$venv/bin/python" --out "$wheels" --quiet)
wheel=$(ls "$wheels"/kinesis_butler-*.whl)
step "built $(basename "$wheel") in $(( $(now) - start )) s"

step "installing the wheel"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"

scripts/emulators.sh start kinesalite
step "pytest"
cd "$here"
KB_BIN_DIR="$target/debug" "$venv/bin/python" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} tests
