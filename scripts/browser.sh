#!/usr/bin/env bash
# Installs what the status-page browser test needs (idempotent): Debian chromium (apt) and
# playwright-core (npm, into .tools/browser/). Prints nothing when both are present.
#   scripts/browser.sh          install if missing
# The test (server/tests/status_page.rs) finds them through KB_CHROMIUM / KB_PLAYWRIGHT_DIR
# or these defaults: `command -v chromium`, .tools/browser/node_modules.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.tools/browser"
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi
if [ ! -f "$dir/node_modules/playwright-core/package.json" ]; then
  echo "installing playwright-core into .tools/browser (npm)"
  mkdir -p "$dir"
  (cd "$dir" && { [ -f package.json ] || echo '{"private":true}' > package.json; } \
    && npm install --no-audit --no-fund --loglevel=error playwright-core@1 >/dev/null)
fi
