"""Shared CLI pieces: the model argument, output paths, loading, checks before the load,
JSON/rich output. Heavy imports stay inside functions so `lmscope --help` answers instantly."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import click

from .params import SEED

__all__ = ["HTML_FILE", "OUT_DIR", "OUT_FILE", "PLOT_FILE", "SEED", "Stages", "check_layers", "check_neurons",
           "check_sites", "console", "device_option", "dtype_option", "emit_json", "json_option", "load_model",
           "model_argument", "model_name_argument", "neuron_names", "precheck", "progress_enabled", "resolve_neurons"]

#: MODEL, the name of the model (the loaded one is `model` in the command bodies)
model_argument = click.argument("model_name", metavar="[MODEL]", default="gemma-3-270m", required=False)
#: MODEL when the command has no default model
model_name_argument = click.argument("model_name", metavar="MODEL")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
device_option = click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")


def shard_options(f: Callable) -> Callable:
    """--job DIR / --backend / --workers / --ray-address, passed to the command as one `shards`
    argument: a `ShardOptions` (a resumable sharded job) or None (one pass in this process)."""
    import functools

    @click.option("--job", "job_dir", type=click.Path(file_okay=False),
                  help="Run as a resumable sharded job in this folder (rerun the command to resume).")
    @click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                  help="Where the job's shards run: this process, or Ray actors (pip install 'lmscope[ray]').")
    @click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Ray actors.")
    @click.option("--ray-address", help="A running Ray cluster to join (default: start a local one).")
    @functools.wraps(f)
    def wrapper(*args, job_dir, backend, workers, ray_address, **kw):
        if job_dir is None:
            if backend != "local" or workers != 1 or ray_address:
                raise click.UsageError("--backend, --workers and --ray-address need --job DIR (the job's folder).")
            return f(*args, shards=None, **kw)
        from lmscope.engine.sharded import ShardOptions

        return f(*args, shards=ShardOptions(folder=job_dir, backend=backend, workers=workers,
                                            ray_address=ray_address), **kw)

    return wrapper
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


def load_model(name: str, device: str = "cpu", dtype: str = "float32"):
    """`lmscope.engine.loading.load`, quiet (no HF bars or logs on stdout/stderr for --json)."""
    import torch

    from lmscope.engine import loading

    if device == "cpu" and not os.environ.get("LMSCOPE_THREADS"):
        torch.set_num_threads(max(1, torch.get_num_threads()))
    return loading.load(name, device=device, dtype=dtype, quiet=True)  # looked up at call time (tests stub it)


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


def precheck(model_name: str | None, hint: str, check: Callable) -> None:
    """Run `check(shape)` against the known shape of an embedded MODEL (`loading.known_shape`)
    before the command loads it, so that a typo in a layer or neuron costs no model load.
    An LmscopeError from `check` becomes a usage error naming `hint` (exit 2). Other models
    are checked by the library after loading, with the same messages."""
    from lmscope.engine.errors import LmscopeError
    from lmscope.engine.loading import known_shape

    shape = known_shape(model_name) if model_name else None
    if shape is None:
        return
    try:
        check(shape)
    except LmscopeError as e:
        raise click.BadParameter(str(e), param_hint=hint) from None


def check_layers(model_name: str | None, hint: str, layers) -> None:
    """`precheck` a layer option: an int, a sequence of ints (the `LAYERS` type), or None."""
    if layers is None:
        return

    def check(shape):
        for layer in [layers] if isinstance(layers, int) else layers:
            shape.sites(f"layers.{layer}.resid_post")

    precheck(model_name, hint, check)


def resolve_neurons(model, neurons) -> list[tuple[int, int]]:
    """(layer, neuron) pairs (the `NEURONS` type) checked against `model`, a loaded `Model` or
    a `ModelShape`, with the site grammar's messages; negative indices resolved."""
    out = []
    for layer, n in neurons:
        (site,) = model.sites(f"layers.{layer}.mlp.neurons[{n}]")
        out.append((site.layer, site.units[0]))
    return out


def check_neurons(model_name: str | None, hint: str, neurons) -> None:
    """`precheck` (layer, neuron) pairs (None: nothing to check)."""
    if neurons:
        precheck(model_name, hint, lambda shape: resolve_neurons(shape, neurons))


def check_sites(model_name: str | None, hint: str, sites) -> None:
    """`precheck` site strings such as 'layers.5.mlp.neurons[100]'."""
    precheck(model_name, hint, lambda shape: [shape.sites(s) for s in sites])


def neuron_names(neurons) -> str:
    """[(10, 1624), (12, 7)] -> "10.1624,12.7"."""
    return ",".join(f"{layer}.{n}" for layer, n in neurons)


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=1, ensure_ascii=False, default=_default))


def write_json(folder: str | None, name: str, obj):
    """Write `obj` as `folder/name` (atomically; the folder is created) and return the path, or
    None when no folder was asked for."""
    if not folder:
        return None
    from pathlib import Path

    from lmscope.engine.artifacts import atomic_write

    text = json.dumps(obj, indent=1, ensure_ascii=False, default=_default)
    return atomic_write(Path(folder) / name, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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


def print_tables(result) -> None:
    """Every table of a result object, as rich tables. Cells, titles and notes are text, not rich
    markup: a token such as "[/]" or "[bold]" prints as itself."""
    from rich.markup import escape
    from rich.table import Table as Rich

    for t in result.tables():
        rt = Rich(*map(escape, t.columns), title=escape(t.title) if t.title else None)
        for row in t.text_rows():
            rt.add_row(*map(escape, row))
        console().print(rt)
        for note in t.notes:
            console().print(escape(note))
