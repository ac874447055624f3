#!/usr/bin/env bash
# Installs and runs the local Kinesis emulators (and the DynamoDB emulator dynalite) used
# by the demo and the tests.
#   scripts/emulators.sh install              npm packages into .tools/
#   scripts/emulators.sh start [NAME...]      start (kinesis-local, kinesalite, dynalite) unless running
#   scripts/emulators.sh stop [NAME...]       stop what this script started (or only NAME)
# Ports: kinesis-local 4610 (TLS 4611), kinesalite 4620, dynalite 4630; override with env.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
run="$tools/run"
KINESIS_LOCAL_PORT=${KINESIS_LOCAL_PORT:-4610}
KINESALITE_PORT=${KINESALITE_PORT:-4620}
DYNALITE_PORT=${DYNALITE_PORT:-4630}

install() {
  mkdir -p "$tools"
  if [ ! -f "$tools/node_modules/kinesis-local/main.js" ] || [ ! -f "$tools/node_modules/kinesalite/cli.js" ]; then
    echo "installing Kinesis emulators into .tools/ (npm)"
    (cd "$tools" && [ -f package.json ] || echo '{"private":true}' > package.json)
    (cd "$tools" && npm install --no-audit --no-fund --loglevel=error kinesis-local@0.6.2 kinesalite@3.3.3 >/dev/null)
  fi
  if [ ! -f "$tools/node_modules/dynalite/cli.js" ]; then
    echo "installing the DynamoDB emulator dynalite into .tools/ (npm)"
    (cd "$tools" && [ -f package.json ] || echo '{"private":true}' > package.json)
    (cd "$tools" && npm install --no-audit --no-fund --loglevel=error dynalite@4.0.0 >/dev/null)
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 150); do port_open "$1" && return 0; sleep 0.2; done
  echo "emulator on port $1 did not start; see $run/*.log" >&2; return 1
}

start_one() {
  mkdir -p "$run"
  case "$1" in
    kinesis-local)
      port_open "$KINESIS_LOCAL_PORT" && return 0
      KINESIS_MOCK_CERT_PATH="$tools/node_modules/kinesis-local/server.json" \
      KINESIS_MOCK_PLAIN_PORT=$KINESIS_LOCAL_PORT KINESIS_MOCK_TLS_PORT=$((KINESIS_LOCAL_PORT + 1)) \
      SHARD_LIMIT=1000 CREATE_STREAM_DURATION=50ms DELETE_STREAM_DURATION=50ms \
      SPLIT_SHARD_DURATION=50ms MERGE_SHARDS_DURATION=50ms UPDATE_SHARD_COUNT_DURATION=50ms \
      REGISTER_STREAM_CONSUMER_DURATION=50ms DEREGISTER_STREAM_CONSUMER_DURATION=50ms \
      LOG_LEVEL=WARN \
        nohup node "$tools/node_modules/kinesis-local/main.js" >"$run/kinesis-local.log" 2>&1 &
      echo $! > "$run/kinesis-local.pid"
      wait_port "$KINESIS_LOCAL_PORT" ;;
    kinesalite)
      port_open "$KINESALITE_PORT" && return 0
      nohup node "$tools/node_modules/kinesalite/cli.js" --port "$KINESALITE_PORT" --shardLimit 1000 \
        --createStreamMs 50 --deleteStreamMs 50 --updateStreamMs 50 >"$run/kinesalite.log" 2>&1 &
      echo $! > "$run/kinesalite.pid"
      wait_port "$KINESALITE_PORT" ;;
    dynalite)
      port_open "$DYNALITE_PORT" && return 0
      nohup node "$tools/node_modules/dynalite/cli.js" --host 127.0.0.1 --port "$DYNALITE_PORT" \
        --createTableMs 50 --deleteTableMs 50 --updateTableMs 50 >"$run/dynalite.log" 2>&1 &
      echo $! > "$run/dynalite.pid"
      wait_port "$DYNALITE_PORT" ;;
    *) echo "unknown emulator $1" >&2; return 2 ;;
  esac
}

case "${1:-}" in
  install) install ;;
  start)
    install
    shift
    for name in "${@:-kinesis-local kinesalite dynalite}"; do for n in $name; do start_one "$n"; done; done ;;
  stop)
    shift
    pids=("$run"/*.pid)
    if [ $# -gt 0 ]; then pids=(); for n in "$@"; do pids+=("$run/$n.pid"); done; fi
    for f in "${pids[@]}"; do
      [ -f "$f" ] || continue
      kill "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    done ;;
  *) echo "usage: $0 install|start [kinesis-local|kinesalite|dynalite]...|stop [kinesis-local|kinesalite|dynalite]..." >&2; exit 2 ;;
esac
