#!/usr/bin/env bash
# Set up (if needed) and run the guided tour on the embedded default model (gemma-3-270m).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/lmscope tour "$@"
