#!/usr/bin/env bash
# Build the two venvs used by benchmarks/bench_sae_training.py (idempotent: a venv
# whose library already imports is left alone).
#   venv-sae       sae-lens 6.54.12  (same lines as shared/peers/setup_venvs.sh)
#   venv-sparsify  eai-sparsify      (EleutherAI sparsify)
# torch is always the CPU wheel 2.13.0, installed first and then pinned with a
# constraint file so no peer can pull a CUDA torch (GBs of nvidia-* packages).
set -eu
ROOT=$HOME/.cache/lmscope-peers
mkdir -p "$ROOT"
C=$ROOT/torch-constraint.txt
echo "torch==2.13.0" > "$C"

# mk VENV MODULE PIP_ARGS...: create VENV unless MODULE already imports there
mk() {
  local venv=$1 module=$2; shift 2
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import $module" >/dev/null 2>&1; then
    echo "ok: $venv ($module already installed)"; return
  fi
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q -c "$C" "$@"
  echo "built: $venv"
}

# sae-lens pins transformer-lens<4 -> pip installs transformer-lens 3.9.0
mk "$ROOT/venv-sae" sae_lens sae-lens==6.54.12 gguf accelerate
mk "$ROOT/venv-sparsify" sparsify eai-sparsify
