"""CLI options generated from `*Config` dataclasses (`lmscope.cli.config_options`) and the click
types of the one grammar (`lmscope.cli.params`)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from typing import Literal

import click
import pytest
from click.testing import CliRunner

from lmscope.cli.config_options import Group, config_options, field_help
from lmscope.cli.main import cli
from lmscope.engine.errors import InputError


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig:
    """A config like the families' ones.

    Attributes:
        steps: Optimizer steps.
        mode: "fast" or "slow".
        layers: Layers to read (None: all).
        coefs: Coefficients to try.
        controls: Controls to run.
        chat: Apply the chat template.
        balance: Weight pairs equally (None: decide from the data).
        strict: Refuse odd input, over
            two lines.
        seed: Seed of the draw.
        lr: Learning rate (None: by optimizer).
        hidden: Not on the command line.
    """

    steps: int = 10
    mode: Literal["fast", "slow"] = "fast"
    layers: tuple[int, ...] | None = None
    coefs: tuple[float, ...] = (0.5, 1.0)
    controls: tuple[str, ...] = ("random", "other")
    chat: bool = False
    balance: bool | None = None
    strict: bool = True
    seed: int = 0
    lr: float | None = None
    hidden: int = 3

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"steps must be at least 1, got {self.steps}.")


def _toy_cli(**kw):
    @click.group(cls=Group)
    def toy() -> None:
        """Toy."""

    @toy.command()
    @click.argument("name")
    @config_options(ToyConfig, exclude={"hidden"}, rename={"steps": "n"}, **kw)
    @click.option("--plain", is_flag=True)
    def go(name, config, plain) -> None:
        """Echo the config."""
        click.echo(repr((name, config, plain)))

    return toy


def _run(group, *args):
    r = CliRunner().invoke(group, list(args))
    return r, r.output


def test_field_help_reads_the_attributes_section():
    helps = field_help(ToyConfig)
    assert helps["steps"] == "Optimizer steps."
    assert helps["strict"] == "Refuse odd input, over two lines."
    assert "hidden" in helps and "A config" not in " ".join(helps.values())


def test_defaults_come_from_the_fields_and_values_build_the_config():
    toy = _toy_cli()
    r, out = _run(toy, "go", "x")
    assert r.exit_code == 0, out
    assert out.strip() == repr(("x", ToyConfig(), False))
    r, out = _run(toy, "go", "x", "--n", "5", "--mode", "slow", "--layers", "0:3,-1", "--coefs", "0:1:3",
                  "--controls", "other", "--chat", "--no-balance", "--no-strict", "--seed", "7", "--lr", "0.1",
                  "--plain")
    assert r.exit_code == 0, out
    want = ToyConfig(steps=5, mode="slow", layers=(0, 1, 2, -1), coefs=(0.0, 0.5, 1.0), controls=("other",),
                     chat=True, balance=False, strict=False, seed=7, lr=0.1)
    assert out.strip() == repr(("x", want, True))
    r, out = _run(toy, "go", "x", "--layers", "all", "--balance", "--controls", "")
    assert out.strip() == repr(("x", ToyConfig(balance=True, controls=()), False))


def test_help_shows_the_docstring_defaults_and_grammar():
    r, out = _run(_toy_cli(), "go", "--help")
    assert r.exit_code == 0, out
    flat = " ".join(out.split())
    assert "--n INTEGER Optimizer steps. [default: 10]" in flat
    assert "--mode [fast|slow]" in flat and "--chat Apply the chat template." in flat
    assert "--balance / --no-balance" in flat and "--strict / --no-strict" in flat
    assert "Written 'all', '3,6,9'" in flat and "[default: 0.5,1.0]" in flat
    assert "--hidden" not in out and "--steps" not in out and "--plain" in out


def test_usage_errors_exit_2():
    toy = _toy_cli()
    r, out = _run(toy, "go", "x", "--n", "0")  # the Config rejects it
    assert r.exit_code == 2 and "Error: steps must be at least 1, got 0." in out
    r, out = _run(toy, "go", "x", "--seed", "-1")  # seeds: what torch accepts
    assert r.exit_code == 2 and "--seed" in out
    r, out = _run(toy, "go", "x", "--layers", "a")
    assert r.exit_code == 2 and "Layers are written" in out
    r, out = _run(toy, "go", "x", "--coefs", "1,nan")
    assert r.exit_code == 2 and "finite" in out


def test_types_and_defaults_overrides():
    toy = _toy_cli(types={"steps": click.IntRange(1, 20)}, defaults={"chat": True})
    r, out = _run(toy, "go", "x", "--n", "21")
    assert r.exit_code == 2 and "1<=x<=20" in out
    r, out = _run(toy, "go", "x")
    assert out.strip() == repr(("x", ToyConfig(chat=True), False))
    r, out = _run(toy, "go", "x", "--no-chat")
    assert out.strip() == repr(("x", ToyConfig(chat=False), False))


def test_a_field_without_default_is_a_required_option():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Needs:
        """Attributes:
        name: A name.
        """

        name: str

    @click.command(cls=Group.command_class)
    @config_options(Needs)
    def go(config) -> None:
        click.echo(config.name)

    assert CliRunner().invoke(go, []).exit_code == 2
    assert CliRunner().invoke(go, ["--name", "a"]).output == "a\n"


def test_a_wrong_field_name_fails_when_the_options_are_made():
    @click.command(cls=Group.command_class)
    @config_options(ToyConfig, rename={"stepz": "n"})
    def go(config) -> None:
        pass

    with pytest.raises(ValueError, match=r"has no field\(s\) \['stepz'\]"):
        go.params  # noqa: B018


def test_the_dataclass_is_imported_on_first_use_only(tmp_path):
    """`lmscope --help` (and importing the CLI) imports no family, so no torch."""
    (tmp_path / "lazy_cfg_mod.py").write_text(textwrap.dedent('''
        import dataclasses

        @dataclasses.dataclass(frozen=True, kw_only=True)
        class LazyConfig:
            """Attributes:
                k: How many.
            """

            k: int = 2
    '''))
    code = textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import click
        from click.testing import CliRunner
        from lmscope.cli.config_options import Group, config_options
        from lmscope.cli.main import cli

        assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
        assert CliRunner().invoke(cli, ["fv", "--help"]).exit_code == 0
        print("torch" in sys.modules, "lmscope.function_vectors.core" in sys.modules)

        @click.group(cls=Group)
        def g():
            pass

        @g.command()
        @config_options("lazy_cfg_mod:LazyConfig")
        def go(config):
            click.echo(config.k)

        print("lazy_cfg_mod" in sys.modules)
        print(CliRunner().invoke(g, ["go", "--k", "5"]).output.strip(), "lazy_cfg_mod" in sys.modules)
    ''')
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["False False", "False", "5 True"]


def _commands(group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_every_command_builds_its_options_and_help():
    """Every config_options request names real fields, and every --help renders."""
    seen = 0
    for path, cmd in _commands(cli):
        names = [p.name for p in cmd.params]
        assert len(names) == len(set(names)), (path, names)
        r = CliRunner().invoke(cli, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        seen += 1
    assert seen >= 30


@pytest.mark.parametrize(("path", "option", "config", "field"), [
    (("fv", "make"), "--n", "lmscope.function_vectors.core:FVConfig", "n_prompts"),
    (("fv", "sweep"), "--top-heads", "lmscope.function_vectors.core:FVConfig", "top_heads"),
    (("vector", "make"), "--batch-size", "lmscope.vectors.vector:ExtractConfig", "batch_size"),
    (("vector", "sweep"), "--kl-max", "lmscope.vectors.steering:SweepConfig", "kl_max"),
    (("lens", "tuned-train"), "--steps", "lmscope.lens.tuned:TunedLensConfig", "steps"),
    (("lens", "latent"), "--tgt", "lmscope.lens.latent:LatentConfig", "tgt"),
    (("inspect", "backpatch"), "--batch-size", "lmscope.inspect.backpatching:BackpatchConfig", "batch_size"),
    (("atlas", "build"), "--k", "lmscope.neurons.atlas:AtlasConfig", "k"),
    (("atlas", "clamp"), "--seed", "lmscope.neurons.clamp:ClampConfig", "seed"),
    (("neuron", "record"), "--window", "lmscope.neurons.recording:RecordConfig", "window"),
])
def test_cli_defaults_are_the_config_defaults(path, option, config, field):
    import importlib

    module, _, name = config.partition(":")
    cls = getattr(importlib.import_module(module), name)
    cmd = cli
    for part in path:
        cmd = cmd.commands[part]
    (opt,) = [p for p in cmd.params if option in p.opts]
    assert opt.default == getattr(cls(), field)


# ---- the grammar's click types -------------------------------------------------------------------

def _convert(t, text):
    return t.convert(text, None, None)


def test_values_take_lists_and_inclusive_ranges():
    from lmscope.cli.params import VALUES

    assert _convert(VALUES, "0.25,0.5,1") == (0.25, 0.5, 1.0)
    got = _convert(VALUES, "-4:8:13")
    assert len(got) == 13 and got[0] == -4.0 and got[-1] == 8.0 and got[1] == -3.0
    assert _convert(VALUES, "2:9:1") == (2.0,)
    for bad in ("1:2", "1:2:0", "a:2:3", "1:2:x", "1:inf:3", ""):
        with pytest.raises(click.BadParameter):
            _convert(VALUES, bad)


def test_units_layers_neurons_words():
    from lmscope.cli.params import LAYERS, NEURONS, UNITS, WORDS

    assert _convert(UNITS, "5,17") == (5, 17) and _convert(UNITS, "0:3") == (0, 1, 2) and _convert(UNITS, "all") is None
    with pytest.raises(click.BadParameter, match="neuron indices like 5,17"):
        _convert(UNITS, "5,x")
    assert _convert(LAYERS, "0:18:6,-1") == (0, 6, 12, -1)
    assert _convert(NEURONS, "10.1624,layers.12.mlp.neurons[7,8]") == [(10, 1624), (12, 7), (12, 8)]
    assert _convert(WORDS, " random , other,") == ("random", "other")
