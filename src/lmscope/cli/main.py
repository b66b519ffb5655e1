"""`lmscope` entry point: a click group; command groups register from their own modules."""

from __future__ import annotations

import importlib
import logging
import sys

import click

# Each module defines register(group). Adding a technique = adding a module name here.
COMMAND_MODULES = ("core", "lens", "inspect", "neurons", "atlas", "vectors", "fv", "studio")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.version_option(package_name="lmscope")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """lmscope: a microscope for language models (default model: gemma-3-270m)."""
    ctx.ensure_object(dict)["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        import os
        import warnings

        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"lmscope.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"lmscope.cli.{_name}":
            raise
        continue
    _mod.register(cli)


def main() -> None:
    """Run the CLI: LmscopeError -> exit 1 with a one-line message; usage error -> exit 2."""
    debug = "--debug" in sys.argv
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - the boundary where errors become messages
        from lmscope.engine.errors import LmscopeError

        if debug:
            raise
        if isinstance(e, LmscopeError):
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        click.echo(f"Internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
