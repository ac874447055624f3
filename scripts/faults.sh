#!/usr/bin/env bash
# The fault suite (server/tests/fault_suite.rs): two server instances, consumer processes
# and a producer of numbered records, while servers and consumers are SIGKILLed, Redis is
# restarted and the connection to the emulator is cut, at least 24 faults in ~70 s. Fails
# on a lost record or a checkpoint that moved backwards; prints FIGURE name=value lines
# (faults, records put and received, duplicates, recovery times). `make test` runs it too.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/services.sh
command -v redis-server >/dev/null || { echo "faults: redis-server must be on PATH" >&2; exit 1; }

port=${KINESIS_LOCAL_PORT:-4610}
export KB_KINESIS_LOCAL_ENDPOINT="${KB_KINESIS_LOCAL_ENDPOINT:-http://127.0.0.1:$port}"
if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  scripts/emulators.sh start kinesis-local
  trap 'scripts/emulators.sh stop kinesis-local' EXIT
fi

cargo test -p kinesis-butler --test fault_suite -- --nocapture
