"""`lmscope` entry point: a click group; each command group is a module of this package
(`cli/<group>.py` defines its group and commands at module level) and is added here."""

from __future__ import annotations

import logging
import sys

import click

from . import atlas, circuits, core, fv, inspect, lens, neurons, relations, saes, studio, vectors
from .config_options import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
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


for _command in (core.tour, core.models, core.info, core.run, core.generate, lens.lens, inspect.inspect,
                 neurons.neuron, atlas.atlas, vectors.vector, fv.fv, circuits.circuit, saes.sae, relations.relation,
                 studio.studio):
    cli.add_command(_command)


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
