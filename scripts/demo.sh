#!/usr/bin/env bash
# The main job, end to end on one machine: a local Kinesis emulator, the server on its
# embedded store, a producer and a processor, with records visibly flowing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
demo="$root/.demo"
port=${KB_DEMO_PORT:-50051}
count=${KB_DEMO_RECORDS:-3000}
processor=${KB_DEMO_PROCESSOR:-rust}
mkdir -p "$demo"
rm -f "$demo"/butler.db*

export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:${KINESIS_LOCAL_PORT:-4610}

echo "== building"
cargo build --quiet -p kinesis-butler -p kinesis-butler-examples --bins
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/debug"
case "$processor" in
  python)
    [ -x .venv/bin/python ] || python3 -m venv .venv
    if ! .venv/bin/python -c 'import kinesis_butler' 2>/dev/null; then
      echo "== building the Python package (maturin) into .venv"
      .venv/bin/python -m pip install -q --disable-pip-version-check "maturin>=1.16,<2"
      (cd bindings/python && ../../.venv/bin/maturin build --quiet --interpreter ../../.venv/bin/python --out "$target/wheels/demo")
      .venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$target"/wheels/demo/*.whl
    fi ;;
  node)
    if ! ls bindings/node/*.node >/dev/null 2>&1; then
      echo "== building the Node addon (napi)"
      (cd bindings/node && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts && npx napi build --platform --js native.js --dts native.d.ts)
    fi
    (cd examples/node && npm install --no-audit --no-fund --loglevel=error) ;;
  rust) ;;
  *) echo "KB_DEMO_PROCESSOR must be rust, python or node" >&2; exit 2 ;;
esac

echo "== starting the Kinesis emulator (kinesis-local)"
scripts/emulators.sh start kinesis-local

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/emulators.sh stop
}
trap cleanup EXIT

stream="demo-$(date +%s)"
"$bin/producer" --stream "$stream" --shards 4 --count 0 >/dev/null

echo "== starting kinesis-butler on 127.0.0.1:$port (store sqlite://$demo/butler.db)"
"$bin/kinesis-butler" --listen "127.0.0.1:$port" --store "sqlite://$demo/butler.db" \
  --idle-interval 200ms >"$demo/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

echo "== starting the $processor processor (app demo, stream $stream)"
case "$processor" in
  rust) "$bin/processor" --endpoint "http://127.0.0.1:$port" --app demo --stream "$stream" \
          > >(tee "$demo/processor.log") 2>&1 & ;;
  python) .venv/bin/python examples/python/processor.py --endpoint "http://127.0.0.1:$port" --app demo --stream "$stream" \
          > >(tee "$demo/processor.log") 2>&1 & ;;
  node) node examples/node/processor.js --endpoint "http://127.0.0.1:$port" --app demo --stream "$stream" \
          > >(tee "$demo/processor.log") 2>&1 & ;;
esac
proc=$!
pids+=("$proc")

echo "== producing $count records"
"$bin/producer" --stream "$stream" --count "$count" --rate 300

echo "== waiting for the processor to catch up"
for _ in $(seq 1 600); do
  total=$(grep -oE 'total=[0-9]+' "$demo/processor.log" | tail -n1 | cut -d= -f2 || true)
  [ "${total:-0}" -ge "$count" ] && break
  sleep 0.1
done

echo "== stopping (processor: final checkpoints; server: SIGTERM)"
kill -INT "$proc" 2>/dev/null || true
for _ in $(seq 1 300); do kill -0 "$proc" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$proc" 2>/dev/null; then
  echo "the processor did not stop within 30 s of SIGINT" >&2
  exit 1
fi
wait "$proc" 2>/dev/null || true
kill -TERM "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
pids=()

echo "== result"
echo "records put: $count; records processed: ${total:-0}"
if [ "${total:-0}" -lt "$count" ]; then
  echo "the processor did not receive every record; see $demo/*.log" >&2
  exit 1
fi
echo "demo finished: every record flowed Kinesis -> kinesis-butler -> processor"
