"""Run `lmscope ...` in-process for the CLI tests (exit code, stdout, stderr)."""

from __future__ import annotations

import contextlib
import io
import sys


def call(*argv: str) -> tuple[int, str, str]:
    """`lmscope ARGV` in-process: (exit code, stdout, stderr); never an internal error or traceback."""
    from lmscope.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["lmscope", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli_main.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    assert "Internal error" not in err.getvalue() and "Traceback" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()
