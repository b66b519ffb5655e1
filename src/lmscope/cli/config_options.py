"""Click options generated from a technique's `*Config` dataclass, so that a default or a
help text lives in one place (the dataclass and its Google-style docstring).

    @config_options(FVConfig, exclude={"batch_size"})
    def make(model, config, ...):      # `config` is an FVConfig built from the options

Field types map to click types: bool -> a flag (`--x/--no-x` when the default is True),
int/float/str -> the type, Literal[...] -> a choice, tuple[int, ...] | None (layers) -> the
layer grammar of `lmscope.cli.params.LAYERS`. A Config that rejects its values (its
`__post_init__` raises an LmscopeError) becomes a usage error naming the options (exit 2).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Callable

import click

from lmscope.cli.params import LAYERS


def field_help(cls) -> dict[str, str]:
    """`name -> description` from the "Attributes:" section of a Google-style docstring."""
    doc = inspect.getdoc(cls) or ""
    m = re.search(r"^Attributes:\n(.*?)(?:\n\S|\Z)", doc, flags=re.S | re.M)
    out: dict[str, str] = {}
    if not m:
        return out
    name = None
    for line in m.group(1).splitlines():
        head = re.match(r"^ {4}(\w+)(?: \([^)]*\))?: (.*)$", line)
        if head:
            name = head.group(1)
            out[name] = head.group(2).strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
    return out


def _click_type(tp) -> tuple[object, bool]:
    """(click type, is_flag) for a resolved annotation."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(tp)]), False
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _click_type(args[0])
    if origin is tuple:
        return LAYERS, False
    if tp is bool:
        return click.BOOL, True
    if tp in (int, float, str):
        return {int: click.INT, float: click.FLOAT, str: click.STRING}[tp], False
    return click.STRING, False


def config_options(cls, *, exclude: set[str] = frozenset(), rename: dict[str, str] | None = None,
                   param: str = "config") -> Callable:
    """Decorate a click command with one option per field of `cls`; the command receives a
    built `cls` instance as `param` instead of the separate values."""
    rename = rename or {}
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in exclude]

    def decorate(fn):
        names = {}
        for f in reversed(fields):
            tp, is_flag = _click_type(hints[f.name])
            opt = "--" + rename.get(f.name, f.name).replace("_", "-")
            dest = f"_cfg_{f.name}"
            names[dest] = f.name
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, tuple):
                default = ",".join(map(str, default))
            kw = {"help": helps.get(f.name, ""), "show_default": True}
            if is_flag:
                flag = f"{opt}/--no-{opt[2:]}" if default else opt
                fn = click.option(flag, dest, default=bool(default), **kw)(fn)
            else:
                fn = click.option(opt, dest, type=tp, default=default, **kw)(fn)

        def wrapper(*args, **kwargs):
            from lmscope.engine.errors import LmscopeError

            values = {names[k]: kwargs.pop(k) for k in list(kwargs) if k in names}
            values = {k: v for k, v in values.items() if v is not None or hints[k] is type(None)}
            try:
                kwargs[param] = cls(**values)
            except LmscopeError as e:
                raise click.UsageError(str(e)) from None
            return fn(*args, **kwargs)

        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        wrapper.__click_params__ = getattr(fn, "__click_params__", [])
        return wrapper

    return decorate
