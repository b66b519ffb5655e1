"""Every CLI command, fed random and hostile arguments, ends with exit 0, or exit 1/2 and one
`Error:` line on stderr: never "Internal error" (an exception lmscope did not turn into a message).

The model is a tiny random llama with SmolLM2's real tokenizer (so prompts, tasks and chat
templates behave as on a real model) and every command runs in-process through `main()`."""

from __future__ import annotations

import os
import random
import signal
import sys

import click
import pytest
import torch

pytestmark = pytest.mark.slow

SKIP = {"studio"}  # serves forever; its arguments are tested in tests/test_studio.py
TRIALS = 8  # per command
SEED = int(os.environ.get("LMSCOPE_FUZZ_SEED", "1234"))  # CI uses the fixed seed; set it to explore


class _Slow(BaseException):
    """Raised by the alarm: a command ran past its budget on valid input (not an error)."""


@pytest.fixture(scope="module")
def fuzz_model(smollm):
    from transformers import AutoConfig, AutoModelForCausalLM

    import lmscope

    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=smollm.d_vocab,
                               max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    return lmscope.Model(hf, smollm.tokenizer, name="tiny")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (d / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    (d / "number.jsonl").write_text("3\n")
    (d / "broken.jsonl").write_text('{"positive": "a", \n')
    (d / "pairs.jsonl").write_text('{"positive": "a happy day", "negative": "a sad day"}\n' * 4)
    (d / "v.safetensors").write_bytes(b"not safetensors")
    (d / "v.safetensors.json").write_bytes(b"[1, 2]")
    (d / "folder").mkdir()
    return d


def _values(kind: str, files) -> list[str]:
    paths = [str(files / n) for n in ("latin1.jsonl", "latin1.txt", "number.jsonl", "broken.jsonl", "pairs.jsonl",
                                      "v.safetensors", "folder", "missing.jsonl")] + ["/proc/x", "/etc/hostname/sub"]
    plausible = ["The capital of France is", "1", "2", "1.5", "0:2", "antonym", "sentiment", " Paris", "hello world",
                 "layers.1.resid_post", "1,2", "0.3"]
    common = plausible * 2 + ["", " ", "ꙮ" * 40, "\u202e", "-1", "0", "3", "1:2", "all", "nan", "inf", "1e309", "x,y", "2.7",
              "layers.99.resid_post", "99.99999", "-5:", "a=b"]
    return {"int": ["-5", "0", "1", "1", "2", "2", "x", "99999999999999999999", "nan"],
            "float": ["nan", "inf", "-inf", "1e309", "-0", "0.5", "x"],
            "path": paths, "out": paths + [str(files / "new" / "out.json")]}.get(kind, common + paths[:3])


def _kind(p: click.Parameter) -> str:
    t = p.type
    if isinstance(t, click.types.IntParamType):
        return "int"
    if isinstance(t, click.types.FloatParamType):
        return "float"
    if isinstance(t, click.Path):
        return "path"
    if type(t).__name__ == "_OutPath":
        return "out"
    return "str"


def _commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        if name in SKIP:
            continue
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def _args(cmd: click.Command, rng: random.Random, files) -> list[str]:
    args: list[str] = []
    for p in cmd.params:
        if isinstance(p, click.Argument):
            if p.name and p.name.startswith("model"):
                args.append(rng.choice(["tiny", "tiny", "tiny", "no-such-model"]))
            else:
                args.append(rng.choice(_values(_kind(p), files)))
            continue
        if p.name in ("device",):
            continue
        if not p.required and rng.random() < 0.7:
            continue
        flag = p.opts[0]
        if getattr(p, "is_flag", False):
            args.append(flag)
        elif isinstance(p.type, click.Choice):
            args += [flag, rng.choice([*map(str, p.type.choices), "bogus"])]
        else:
            args += [flag, rng.choice(_values(_kind(p), files))]
    return args


def test_every_command_answers_bad_arguments_with_one_error_line(fuzz_model, files, monkeypatch, capsys, tmp_path):
    from lmscope.cli import main as cli_main
    from lmscope.engine import loading as models
    from lmscope.engine.errors import ModelNotFound

    def fake_load(name, *a, **kw):
        if name != "tiny":
            raise ModelNotFound(f"Unknown model {name!r}.")
        return fuzz_model

    monkeypatch.setattr(models, "load", fake_load)
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED)
    bad, ran, codes = [], 0, {}

    def alarm(*_):
        raise _Slow

    old = signal.signal(signal.SIGALRM, alarm)
    try:
        for path, cmd in _commands(cli_main.cli):
            for _ in range(TRIALS):
                argv = ["lmscope", *path, *_args(cmd, rng, files)]
                monkeypatch.setattr(sys, "argv", argv)
                code = 0
                signal.alarm(8)
                try:
                    cli_main.main()
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except _Slow:
                    code = None
                finally:
                    signal.alarm(0)
                err = capsys.readouterr().err
                ran += 1
                codes[code] = codes.get(code, 0) + 1
                errors = [line for line in err.splitlines() if line.startswith("Error:")]
                if "Internal error" in err or code not in (0, 1, 2, None) or (code in (1, 2) and len(errors) != 1):
                    bad.append(f"{' '.join(argv)!r} -> exit {code}: {err.strip()[-300:]}")
    finally:
        signal.signal(signal.SIGALRM, old)
    print(f"{ran} invocations, exit codes: {sorted(codes.items(), key=str)}")
    assert ran >= TRIALS * 30
    assert codes.get(0, 0) + codes.get(None, 0) >= ran // 20, "almost nothing ran: the fuzz only reaches argument parsing"
    assert not bad, f"{len(bad)} of {ran} invocations:\n" + "\n".join(bad[:20])
