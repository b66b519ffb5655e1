#!/usr/bin/env bash
# Set up (if needed; setup.sh returns at once when .venv matches requirements/lock.txt) and run
# the whole test suite, real-model tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q "$@"
