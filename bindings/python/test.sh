#!/usr/bin/env bash
# Installs the Python package exactly as a user does from a checkout, into a fresh
# virtualenv: `pip install ./bindings/python` (pip builds the abi3 wheel with maturin and
# cargo), then runs its tests against a real kinesis-butler server and the kinesalite
# emulator (started if not running), mypy included.
#
#   bindings/python/test.sh            debug build of the extension (fast to build)
#   KB_PROFILE=release bindings/python/test.sh
#
# Env: CARGO_TARGET_DIR (build outputs), KB_SKIP_SERVER_BUILD=1 (use the built server),
# PYTEST_ARGS. The virtualenv is a new temporary one each time (never KB_VENV: that one
# holds the repository's other test tools).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
export CARGO_TARGET_DIR="$target"
profile="${KB_PROFILE:-debug}"
cd "$root"

step() { printf '== python: %s\n' "$*"; }
now() { date +%s; }

venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
step "creating a fresh virtualenv $venv"
python3 -m venv "$venv"
step "installing pytest, mypy"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "pytest>=7" mypy

if [ -z "${KB_SKIP_SERVER_BUILD:-}" ]; then
  step "building the server binary used by the tests"
  cargo build -q -p kinesis-butler
fi

step "pip install ./bindings/python ($profile)"
start=$(now)
# maturin's build backend takes cargo flags from MATURIN_PEP517_ARGS; a user's install
# is a release build.
[ "$profile" = release ] || export MATURIN_PEP517_ARGS="--profile dev"
"$venv/bin/python" -m pip install -q --disable-pip-version-check ./bindings/python
step "installed in $(( $(now) - start )) s: $("$venv/bin/python" -c 'import kinesis_butler, sys; sys.stdout.write(kinesis_butler.__file__)')"

scripts/emulators.sh start kinesalite
step "pytest"
cd "$here"
KB_BIN_DIR="$target/debug" "$venv/bin/python" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} tests
