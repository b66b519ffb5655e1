"""Shared CLI pieces: model option, JSON/rich output. Heavy imports stay inside functions so
`lmscope --help` answers instantly."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import click

model_argument = click.argument("model", default="gemma-3-270m", required=False)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
device_option = click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
dtype_option = click.option("--dtype", default="float32", show_default=True,
                            type=click.Choice(["float32", "bfloat16", "float16"]))


class _OutPath(click.ParamType):
    """An output file or folder, checked by a real write when the command line is parsed, so
    an unwritable --out fails before any model load or work (exit 2)."""

    def __init__(self, folder: bool, suffixes: tuple[str, ...] = ()) -> None:
        self.folder, self.suffixes = folder, suffixes
        self.name = "folder" if folder else "file"

    def convert(self, value, param, ctx):
        from pathlib import Path

        from lmscope.engine.artifacts import check_writable
        from lmscope.engine.errors import LmscopeError

        if value is None:
            return None
        p = Path(str(value)).expanduser()
        if self.suffixes and p.suffix.lower() not in self.suffixes:
            self.fail(f"{str(p)[:200]} should end in {' or '.join(self.suffixes)}.", param, ctx)
        try:
            if self.folder:
                if p.exists() and not p.is_dir():
                    raise click.BadParameter(f"{p} is a file; expected a folder.", ctx=ctx, param=param)
                check_writable(p / ".lmscope-out", what="output folder")
            else:
                check_writable(p, what="output file")
        except LmscopeError as e:
            self.fail(str(e), param, ctx)
        except OSError as e:
            self.fail(f"Cannot write {str(p)[:200]}: {e.strerror or e}.", param, ctx)
        return str(value)


OUT_FILE = _OutPath(folder=False)
OUT_DIR = _OutPath(folder=True)
PLOT_FILE = _OutPath(folder=False, suffixes=(".png", ".svg", ".pdf"))
HTML_FILE = _OutPath(folder=False, suffixes=(".html", ".htm"))
SEED = click.IntRange(0, 2**32 - 1)  # what torch.manual_seed and random.Random accept


def load_model(name: str, device: str = "cpu", dtype: str = "float32"):
    import torch

    from lmscope.engine import loading as models

    try:  # keep stdout/stderr clean for --json consumers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    if device == "cpu" and not os.environ.get("LMSCOPE_THREADS"):
        torch.set_num_threads(max(1, torch.get_num_threads()))
    return models.load(name, device=device, dtype=dtype)  # looked up at call time (tests stub it)


class Stages:
    """`[i/n] what` lines on stderr, one per stage of a long command, so that a person sees
    what each wait is for, also when stderr is not a terminal (progress bars need one).
    stdout, and the --json printed there, is untouched."""

    def __init__(self, n: int) -> None:
        self.n, self.i = n, 0

    def __call__(self, what: str) -> None:
        self.i += 1
        self.n = max(self.n, self.i)
        click.echo(f"[{self.i}/{self.n}] {what}", err=True)


def precheck(model: str | None, hint: str, check: Callable) -> None:
    """Run `check(shape)` against the known shape of an embedded MODEL (`models.known_shape`)
    before the command loads it, so that a typo in a layer or neuron costs no model load.
    An LmscopeError from `check` becomes a usage error naming `hint` (exit 2). Other models
    are checked by the library after loading, with the same messages."""
    from lmscope.engine.errors import LmscopeError
    from lmscope.engine.loading import known_shape

    shape = known_shape(model) if model else None
    if shape is None:
        return
    try:
        check(shape)
    except LmscopeError as e:
        raise click.BadParameter(str(e), param_hint=hint) from None


def check_layers(model: str | None, hint: str, layers, parse: Callable | None = None) -> None:
    """`precheck` a layer option: an int, a list of ints, None, or a string that
    `parse(spec, n_layers)` turns into a list (None: nothing to check)."""
    if layers is None:
        return

    def check(shape):
        sel = parse(layers, shape.n_layers) if parse else layers
        for layer in [sel] if isinstance(sel, int) else sel or ():
            shape.sites(f"layers.{layer}.resid_post")

    precheck(model, hint, check)


def check_neurons(model: str | None, hint: str, spec: str | None) -> None:
    """`precheck` neurons written L.N[,L.N...] or layers.L.mlp.neurons[N,...] (None: nothing)."""
    if spec:
        from lmscope.neurons.recording import parse_neurons

        precheck(model, hint, lambda shape: parse_neurons(shape, spec))  # only .sites is used


def check_sites(model: str | None, hint: str, sites) -> None:
    """`precheck` site strings such as 'layers.5.mlp.neurons[100]'."""
    precheck(model, hint, lambda shape: [shape.sites(s) for s in sites])


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=1, ensure_ascii=False, default=_default))


def _default(o):
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def console():
    from rich.console import Console

    return Console(stderr=False, soft_wrap=True)


def progress_enabled() -> bool:
    return sys.stderr.isatty()
