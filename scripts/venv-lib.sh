# Shared by scripts/setup.sh and scripts/test-newest.sh (sourced, not run): progress lines, the
# torch pin read from the lock, creating a venv, and a quiet pip. The caller sets NAME (for
# errors), PY, VENV and LOCK; `pip_install` uses VPY and CONSTRAINTS.

say() { echo "==> $*" >&2; }
die() { echo "$NAME: $*" >&2; exit 1; }

# TORCH_SPEC: the caller's override, else the lock's torch pin.
lock_torch_spec() {
  local pin
  pin=$(sed -nE 's/^(torch==[^ ;]+).*/\1/p' "$LOCK" 2>/dev/null | head -n1 || true)
  echo "${TORCH_SPEC:-${pin:-torch==2.13.0}}"
}

# Create $VENV with $PY unless it already runs; sets VPY.
ensure_venv() {
  if ! "$VENV/bin/python" -c 'pass' >/dev/null 2>&1; then
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
      || die "$PY is missing or older than Python 3.10 (set PYTHON=/path/to/python3.X)"
    say "creating $VENV with $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PY" -m venv --clear "$VENV"
  fi
  VPY=$VENV/bin/python
}

# pip, quiet: only warnings and errors, on stderr, minus this machine's harmless notes about
# file:// indexes that do not exist.
pip_install() {
  "$VPY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" "$@" 2>&1 \
    | { grep -Ev "^WARNING: Location 'file://[^']*' is ignored" || true; } >&2
}
