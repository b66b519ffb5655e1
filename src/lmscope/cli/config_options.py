"""Click options generated from a technique's `*Config` dataclass, so that a default or a
help text lives in one place (the dataclass and its Google-style docstring).

    @fv.command()                                   # fv made with @click.group(cls=Group)
    @config_options("lmscope.function_vectors.core:FVConfig", exclude={"batch_size"},
                    rename={"n_prompts": "n"})
    def make(model_name, config, ...):              # `config` is an FVConfig built from the options

The dataclass is named by its import path and read the first time the command parses a
command line or shows its help: the family modules import torch, and `lmscope --help` must not
wait for it. The command has to be made by `Command` (every command of a `Group` is).

Field types map to click types: bool -> a flag (`--x/--no-x` when the default is True or None),
int/float/str -> the type (an int named `seed` -> the seeds torch accepts), Literal[...] -> a
choice, tuple[int, ...] -> the layer grammar (`lmscope.cli.params.LAYERS`), tuple[float, ...]
-> `VALUES`, tuple[str, ...] -> comma-separated words. An option left at None ("all" layers, an
optional number not given) leaves the field at its default. A Config that rejects its values
(its `__post_init__` raises an LmscopeError) becomes a usage error (exit 2).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable

import click

from lmscope.cli.params import LAYERS, SEED, VALUES, WORDS


def field_help(cls) -> dict[str, str]:
    """`name -> description` from the "Attributes:" section of a Google-style docstring."""
    doc = inspect.getdoc(cls) or ""
    m = re.search(r"^Attributes:\n(.*?)(?:\n\S|\Z)", doc, flags=re.DOTALL | re.MULTILINE)
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


def _click_type(tp, name: str) -> tuple[object, bool]:
    """(click type, is_flag) for the resolved annotation of field `name`."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(tp)]), False
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _click_type(args[0], name)
    if origin is tuple:
        item = args[0] if args else int
        return {int: LAYERS, float: VALUES}.get(item, WORDS), False
    if tp is bool:
        return click.BOOL, True
    if tp is int and name == "seed":
        return SEED, False
    if tp in (int, float, str):
        return {int: click.INT, float: click.FLOAT, str: click.STRING}[tp], False
    return click.STRING, False


class _Request:
    """What one `config_options` call asked for; `options()` and `build()` read the dataclass."""

    def __init__(self, cls, exclude, rename, types_, defaults, param) -> None:
        self._cls, self.exclude, self.rename = cls, frozenset(exclude), dict(rename or {})
        self.types, self.defaults, self.param = dict(types_ or {}), dict(defaults or {}), param
        unknown = (set(self.rename) | set(self.types) | set(self.defaults)) & self.exclude
        if unknown:
            raise ValueError(f"config_options: {sorted(unknown)} are both excluded and configured.")

    @property
    def cls(self):
        if isinstance(self._cls, str):
            module, _, name = self._cls.partition(":")
            self._cls = getattr(importlib.import_module(module), name)
        return self._cls

    def fields(self) -> list[dataclasses.Field]:
        fields = [f for f in dataclasses.fields(self.cls) if f.init and f.name not in self.exclude]
        known = {f.name for f in fields}
        stray = (set(self.rename) | set(self.types) | set(self.defaults)) - known
        if stray:
            raise ValueError(f"config_options: {self.cls.__name__} has no field(s) {sorted(stray)}.")
        return fields

    def dest(self, name: str) -> str:
        return f"_cfg_{name}"

    def options(self) -> list[click.Option]:
        hints = typing.get_type_hints(self.cls)
        helps = field_help(self.cls)
        out = []
        for f in self.fields():
            tp, is_flag = _click_type(hints[f.name], f.name)
            tp = self.types.get(f.name, tp)
            opt = "--" + self.rename.get(f.name, f.name).replace("_", "-")
            required = False
            if f.name in self.defaults:
                default = self.defaults[f.name]
            elif f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:  # a field the dataclass requires: so does the command line
                default, required = None, True
            if isinstance(default, tuple):
                default = ",".join(map(str, default))
            help_ = " ".join(x for x in (helps.get(f.name, ""), getattr(tp, "hint", "")) if x)
            kw = {"help": help_, "show_default": default is not None}
            if required:  # no `default` at all: for click, default=None is a value given
                kw["required"] = True
            else:
                kw["default"] = default
            if is_flag:  # False: a plain flag; True or None (unset): --x/--no-x
                decl = opt if default is False else f"{opt}/--no-{opt[2:]}"
                out.append(click.Option([decl, self.dest(f.name)], is_flag=True, **kw))
            else:
                out.append(click.Option([opt, self.dest(f.name)], type=tp, **kw))
        return out

    def build(self, kwargs: dict) -> None:
        """Replace the options' values in `kwargs` by the built Config (usage error if rejected)."""
        from lmscope.engine.errors import LmscopeError

        values = {}
        for f in self.fields():
            v = kwargs.pop(self.dest(f.name), None)
            if v is not None:  # not given, or "all": the field's default
                values[f.name] = v
        try:
            kwargs[self.param] = self.cls(**values)
        except LmscopeError as e:
            raise click.UsageError(str(e)) from None


class _Placeholder:
    """Where a `config_options` call sits among a command's params, until `Command` reads it."""

    def __init__(self, request: _Request) -> None:
        self.request = request


class Command(click.Command):
    """A click command whose `config_options` are made from their dataclass on first use."""

    @property
    def params(self) -> list[click.Parameter]:
        if any(isinstance(p, _Placeholder) for p in self._params):
            self._params = [o for p in self._params
                            for o in (p.request.options() if isinstance(p, _Placeholder) else [p])]
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = list(value)


class Group(click.Group):
    """A click group whose commands (and subgroups) are `Command`s, so `config_options` work."""

    command_class = Command
    group_class = type  # subgroups: this class too


def config_options(cls, *, exclude: set[str] = frozenset(), rename: dict[str, str] | None = None,
                   types: dict[str, click.ParamType] | None = None, defaults: dict[str, object] | None = None,
                   param: str = "config") -> Callable:
    """Decorate a click command with one option per field of `cls` (the dataclass or its path
    "module:Class"); the command receives a built `cls` instance as `param` instead of the values.

    Args:
        cls: The Config dataclass, or "package.module:ClassName" (imported on first use).
        exclude: Fields with no option (they keep their defaults; the command may
            `dataclasses.replace` them, e.g. from an inverted flag such as --relaxed).
        rename: field -> option name (without the dashes) where users know another name.
        types: field -> click type where the command line needs bounds the dataclass does
            not state (e.g. `click.IntRange(1, 64)`).
        defaults: field -> the command line's default where it deliberately differs from the
            library's (shown in --help like any default).
        param: The name of the command's argument that receives the Config.
    """
    request = _Request(cls, exclude, rename, types, defaults, param)

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            request.build(kwargs)
            return fn(*args, **kwargs)

        wrapper.__click_params__ = [*getattr(fn, "__click_params__", []), _Placeholder(request)]
        return wrapper

    return decorate
