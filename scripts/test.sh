#!/usr/bin/env bash
# Set up (if needed; setup.sh returns at once when .venv matches requirements/lock.txt) and run
# the whole test suite, real-model tests included.
# The studio's browser tests drive Debian's `chromium` through Playwright (no browser download):
# where it is missing and this runs as root with apt-get, it is installed here; elsewhere those
# tests are skipped with the reason (LMSCOPE_REQUIRE_BROWSER=1, as CI sets, makes that a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
chromium=${LMSCOPE_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "==> installing Debian's chromium for the studio's browser tests (apt-get, about a minute)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "==> could not install chromium; the browser tests will be skipped" >&2
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q "$@"
