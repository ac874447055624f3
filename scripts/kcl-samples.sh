#!/usr/bin/env bash
# Installs the KCL MultiLangDaemon samples the multilang tests run, unmodified, into
# .tools/kcl-samples (idempotent; prints the directory):
#   python/  amazon-kclpy 3.2.0 from PyPI: its sdist unpacked (the package's own install
#            step downloads Java jars, which Kinesis Butler does not need), giving the pure
#            Python package `amazon_kclpy` (put python/amazon_kclpy-3.2.0 on PYTHONPATH)
#            and samples/sample_kclpy_app.py.
#   node/    aws-kcl 2.3.2 from npm, plus the official basic sample consumer of the
#            amazon-kinesis-client-nodejs repository (vendored in
#            multilang/tests/fixtures/aws-kcl, Apache-2.0) placed where it expects to be
#            (node_modules/aws-kcl/samples/...), and log4js 0.6 that its logger uses.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.tools/kcl-samples"
KCLPY_VERSION=3.2.0
AWS_KCL_VERSION=2.3.2

mkdir -p "$dest/python" "$dest/node"

if [ ! -f "$dest/python/amazon_kclpy-$KCLPY_VERSION/samples/sample_kclpy_app.py" ]; then
  echo "kcl-samples: downloading amazon-kclpy $KCLPY_VERSION (sdist, no jars)" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" "amazon-kclpy==$KCLPY_VERSION" >&2
  tar -xzf "$tmp/amazon_kclpy-$KCLPY_VERSION.tar.gz" -C "$dest/python"
fi

sample_js="$dest/node/node_modules/aws-kcl/samples/basic_sample/consumer/sample_kcl_app.js"
if [ ! -f "$dest/node/node_modules/aws-kcl/package.json" ] || [ ! -d "$dest/node/node_modules/log4js" ]; then
  echo "kcl-samples: installing aws-kcl $AWS_KCL_VERSION and log4js 0.6 (npm)" >&2
  (cd "$dest/node" && { [ -f package.json ] || echo '{"private":true}' > package.json; } &&
    npm install --no-audit --no-fund --loglevel=error "aws-kcl@$AWS_KCL_VERSION" "log4js@0.6" >&2)
fi
fixtures="$root/multilang/tests/fixtures/aws-kcl/samples"
mkdir -p "$(dirname "$sample_js")" "$dest/node/node_modules/aws-kcl/samples/util"
cp "$fixtures/basic_sample/consumer/sample_kcl_app.js" "$sample_js"
cp "$fixtures/util/logger.js" "$dest/node/node_modules/aws-kcl/samples/util/logger.js"

echo "$dest"
