"""Shared CLI pieces: model option, JSON/rich output. Heavy imports stay inside functions so
`lmscope --help` answers instantly."""

from __future__ import annotations

import json
import os
import sys

import click

model_argument = click.argument("model", default="gemma-3-270m", required=False)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
device_option = click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
dtype_option = click.option("--dtype", default="float32", show_default=True,
                            type=click.Choice(["float32", "bfloat16", "float16"]))


def load_model(name: str, device: str = "cpu", dtype: str = "float32"):
    import torch

    import lmscope

    try:  # keep stdout/stderr clean for --json consumers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    if device == "cpu" and not os.environ.get("LMSCOPE_THREADS"):
        torch.set_num_threads(max(1, torch.get_num_threads()))
    return lmscope.load(name, device=device, dtype=dtype)


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
