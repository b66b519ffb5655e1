"""Circuit tasks: the pairs are built for the tokenizer (equal lengths, single-token answers,
the right columns), seeded, and on the real models the clean prompts favour the answers."""

from __future__ import annotations

import json
import logging
import re
from types import SimpleNamespace

import pytest
import torch

from lmscope.datasets import circuit_tasks as ct
from lmscope.datasets import shipped
from lmscope.engine.errors import InputError
from lmscope.engine.model import Batch


class ChunkTokenizer:
    """A word-level tokenizer: a word with its leading space is one token, digits come in chunks
    of `k` (a leading space joins the first chunk), like GPT-2 (k=2) or Llama 3 (k=3)."""

    def __init__(self, k: int = 2):
        self.pat = re.compile(rf" ?[A-Za-z]+| ?\d{{1,{k}}}|\s|[^\sA-Za-z\d]")
        self.inv: list[str] = []
        self.vocab: dict[str, int] = {}

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = len(self.inv)
            self.inv.append(piece)
        return self.vocab[piece]

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self._id(p) for p in self.pat.findall(text)]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.inv[i] for i in ids)


def fake(k: int = 2):
    return SimpleNamespace(tokenizer=ChunkTokenizer(k), name=f"fake-{k}-digit")


def assert_pairs_ok(ts: ct.TaskSet):
    assert len(ts) == len(ts.corrupt) == len(ts.positions) == len(ts.answers) == len(ts.wrong)
    for i in range(len(ts)):
        assert len(ts.clean[i]) == len(ts.corrupt[i])
        assert ts.answers[i]
        assert not set(ts.answers[i]) & set(ts.wrong[i])
        if ts.metric != "logprob":
            assert ts.wrong[i] and ts.positions[i] == [len(ts.clean[i]) - 1]
    json.dumps(ts.to_dict())


# ---- TaskSet ---------------------------------------------------------------------------------------
def _toy(n=4):
    rows = [[1, 5 + i, 6, 7] for i in range(n)]
    return ct.TaskSet(name="toy", metric="logit_diff", clean=rows, corrupt=[[1, 9, 6, 7]] * n,
                      positions=[[3]] * n, answers=[[10 + i] for i in range(n)], wrong=[[20]] * n, seed=0,
                      meta={"rows": [{"i": i, "clean": f"c{i}", "corrupt": f"x{i}"} for i in range(n)],
                            "metric_doc": "toy"})


def test_taskset_subset_split_and_summary():
    ts = _toy(5)
    sub = ts.subset([3, 1])
    assert sub.clean == [ts.clean[3], ts.clean[1]] and sub.answers == [[13], [11]]
    assert [r["i"] for r in sub.meta["rows"]] == [3, 1] and sub.meta["examples"][0] == {"clean": "c3", "corrupt": "x3"}
    assert ts.meta["rows"][0]["i"] == 0, "subset leaves the original alone"
    a, b = ts.split(2)
    assert len(a) == 2 and len(b) == 3 and a.clean + b.clean == ts.clean
    assert [r["i"] for r in b.meta["rows"]] == [2, 3, 4]
    d = ts.to_dict()
    assert d["n"] == 5 and d["metric"] == "logit_diff" and "rows" not in d["meta"] and len(d["examples"]) == 3
    json.dumps(d)
    with pytest.raises(InputError, match="n_first must be 1..4, got 5"):
        ts.split(5)
    with pytest.raises(InputError, match="out of range"):
        ts.subset([7])


def test_taskset_rejects_inconsistent_rows():
    with pytest.raises(InputError, match="row 0: clean has 3 tokens, corrupt has 2"):
        ct.TaskSet(name="t", metric="logit_diff", clean=[[1, 2, 3]], corrupt=[[1, 2]], positions=[[2]],
                   answers=[[4]], wrong=[[5]])
    with pytest.raises(InputError, match="Unknown metric 'kl'"):
        ct.TaskSet(name="t", metric="kl", clean=[], corrupt=[], positions=[], answers=[], wrong=[])
    with pytest.raises(InputError, match="one target per position"):
        ct.TaskSet(name="t", metric="logprob", clean=[[1, 2, 3]], corrupt=[[1, 2, 3]], positions=[[0, 1]],
                   answers=[[2]], wrong=[[]])
    with pytest.raises(InputError, match=r"positions \[3\] must be non-empty columns 0..2"):
        ct.TaskSet(name="t", metric="logit_diff", clean=[[1, 2, 3]], corrupt=[[1, 2, 3]], positions=[[3]],
                   answers=[[4]], wrong=[[5]])


# ---- tiny model (one char = one token) ------------------------------------------------------------
def test_ioi_needs_single_token_names(tiny_llama):
    with pytest.raises(InputError, match=r"IOI needs at least 5 names that are one token with a leading space "
                                         r"\(' Mary'\) in tiny-llama's tokenizer \(TinyTokenizer\); 0 of the 150"):
        ct.ioi(tiny_llama)
    with pytest.raises(InputError, match="needs at least 3 names"):
        ct.ioi(tiny_llama, corrupt="flip")


def test_induction_on_a_char_tokenizer(tiny_llama, caplog):
    with caplog.at_level(logging.WARNING):
        ts = ct.induction(tiny_llama, n=4, seq_len=8, seed=3)
    assert "round-trip" in caplog.text and ts.meta["pool"].startswith("printable non-special")
    assert ts.metric == "logprob" and len(ts) == 4 and ts.meta["bos"]
    specials = {0, 1, 2}
    for c, x, pos, ans, wrong in zip(ts.clean, ts.corrupt, ts.positions, ts.answers, ts.wrong, strict=True):
        assert c[0] == 1 and len(c) == 17 and c[1:9] == c[9:] and len(set(c[1:9])) == 8
        assert x[:9] == c[:9] and not set(x[9:]) & set(c[1:9]) and len(set(x[1:])) == 16
        assert pos == list(range(9, 16)) and ans == [c[p + 1] for p in pos] and wrong == []
        assert not set(c[1:]) & specials
    assert ct.induction(tiny_llama, n=4, seq_len=8, seed=3).clean == ts.clean
    assert ct.induction(tiny_llama, n=4, seq_len=8, seed=4).clean != ts.clean


def test_generators_validate_their_arguments(tiny_llama):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="n must be a whole number >= 1"):
            ct.induction(tiny_llama, n=bad)
    with pytest.raises(InputError, match="seq_len must be >= 2"):
        ct.induction(tiny_llama, seq_len=1)
    with pytest.raises(InputError, match="takes at most 256; use seq_len <= 127"):
        ct.induction(tiny_llama, seq_len=200)
    with pytest.raises(InputError, match="corrupt must be 'abc'"):
        ct.ioi(fake(), corrupt="swap")
    with pytest.raises(InputError, match="n must be"):
        ct.greater_than(fake(), n=0)
    with pytest.raises(InputError, match="greater-than supports tokenizers"):
        ct.greater_than(tiny_llama)


# ---- word-level fake tokenizers (exact structure, no model) ----------------------------------------
def test_ioi_structure_on_a_word_tokenizer():
    m = fake()
    ts = ct.ioi(m, n=40, seed=1)
    assert_pairs_ok(ts)
    assert ts.metric == "logit_diff" and ts.meta["n_names"] == 150
    orders = {r["order"] for r in ts.meta["rows"]}
    assert orders == {"ABBA", "BABA"} and len({r["template"] for r in ts.meta["rows"]}) >= 4
    for c, x, ans, wrong, r in zip(ts.clean, ts.corrupt, ts.answers, ts.wrong, ts.meta["rows"], strict=True):
        io, s = ans[0], wrong[0]
        assert m.tokenizer(r["io"])["input_ids"] == [io] and m.tokenizer(r["s"])["input_ids"] == [s]
        assert c[r["io_pos"]] == io and c[r["s1_pos"]] == c[r["s2_pos"]] == s and c.count(s) == 2
        assert (r["io_pos"] < r["s1_pos"]) == (r["order"] == "ABBA") and r["s2_pos"] > r["io_pos"]
        assert io not in x and s not in x  # ABC: three other names
        names = [x[r["io_pos"]], x[r["s1_pos"]], x[r["s2_pos"]]]
        assert len(set(names)) == 3
        assert [t for j, t in enumerate(x) if j not in (r["io_pos"], r["s1_pos"], r["s2_pos"])] == \
            [t for j, t in enumerate(c) if j not in (r["io_pos"], r["s1_pos"], r["s2_pos"])]
    flip = ct.ioi(m, n=40, seed=1, corrupt="flip")
    assert flip.clean == ts.clean
    for x, ans, r in zip(flip.corrupt, flip.answers, flip.meta["rows"], strict=True):
        assert x[r["s2_pos"]] == ans[0]
    assert ct.ioi(m, n=40, seed=1).corrupt == ts.corrupt
    assert ct.ioi(m, n=40, seed=2).clean != ts.clean


def test_greater_than_with_two_digit_tokens():
    m = fake(2)
    ts = ct.greater_than(m, n=20, seed=0)
    assert_pairs_ok(ts)
    assert ts.meta["split"] == "pair" and ts.metric == "prob_diff"
    tok = m.tokenizer
    for c, x, ans, wrong, r in zip(ts.clean, ts.corrupt, ts.answers, ts.wrong, ts.meta["rows"], strict=True):
        assert tok.decode(c[-1:]) == " 17" and tok.decode(x) == r["corrupt"]
        assert tok(f"{r['yy']:02d}")["input_ids"][0] in c and tok("01")["input_ids"][0] in x
        assert sorted(int(tok.decode([a])) for a in ans) == list(range(r["yy"] + 1, 100))
        assert sorted(int(tok.decode([w])) for w in wrong) == list(range(r["yy"]))


def test_greater_than_rejects_three_digit_chunks():
    with pytest.raises(InputError, match=r"splits ' 1732' as \[' 173', '2'\]"):
        ct.greater_than(fake(3))


# ---- user files ---------------------------------------------------------------------------------------
def _write(tmp_path, *lines, name="t.jsonl"):
    f = tmp_path / name
    f.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return f


def test_from_jsonl_on_a_char_tokenizer(tiny_llama, tmp_path, caplog):
    f = _write(tmp_path, {"clean": "ab", "corrupt": "cd", "answer": ["x", "yz"], "wrong": "w"},
               {"clean": "abc", "corrupt": "abd", "answer": "q", "wrong": ["r", "s"]})
    with caplog.at_level(logging.WARNING):
        ts = ct.from_jsonl(f, tiny_llama)
    assert "'yz' is 2 tokens" in caplog.text
    assert_pairs_ok(ts)

    def c(ch):  # TinyTokenizer's id of a char
        return 3 + ord(ch) % 120

    assert ts.name == "t" and ts.seed is None and ts.clean[0] == [1, c("a"), c("b")]
    assert ts.answers[0] == [c("x"), c("y")] and ts.wrong[1] == [c("r"), c("s")]
    assert [r["line"] for r in ts.meta["rows"]] == [1, 2]
    lp = ct.from_jsonl(f, tiny_llama, metric="logprob")
    assert lp.answers == [[c("x")], [c("q")]] and lp.wrong == [[], []]
    assert len(ct.load_task(f, tiny_llama, n=1)) == 1 and len(ct.load_task(str(f), tiny_llama)) == 2


@pytest.mark.parametrize("lines, error", [
    (['{"clean": "ab", "corrupt": "cd", "answer": "x", "wrong": "y"}', '{"clean": "ab", "answer": "x", "wrong": "y"}'],
     r"t.jsonl:2: missing 'corrupt'"),
    (['{"clean": " ", "corrupt": "cd", "answer": "x", "wrong": "y"}'], r"t.jsonl:1: 'clean' must be non-empty text"),
    (['{"clean": "ab", "corrupt": "cd", "answer": "", "wrong": "y"}'], r"t.jsonl:1: 'answer' must be a non-empty"),
    (['{"clean": "ab", "corrupt": "cd", "answer": "x", "wrong": []}'], r"t.jsonl:1: 'wrong' must be a non-empty"),
    (['{"clean": "ab", "corrupt": "cd", "answer": "x", "wrong": "y"}', "",
      '{"clean": "The cat sat on a", "corrupt": "The dog sat on the", "answer": "x", "wrong": "y"}'],
     r"t.jsonl:3: clean has 17 tokens, corrupt has 19; corrupt prompts must tokenize to the same length"),
    (['{"clean": "ab", "corrupt": "cd", "answer": " Paris", "wrong": " Prague"}'],
     r"t.jsonl:1: answer and wrong share the first token"),
    (['{"clean": "ab", "corrupt": "cd", "answer": "x", "wrong": "y"', ], r"t.jsonl:1: not valid JSON"),
    (['["ab", "cd"]'], r"t.jsonl:1: expected a JSON object like"),
    ([""], r"t.jsonl holds no task rows; expected JSON lines like"),
])
def test_from_jsonl_errors_name_the_file_and_line(tiny_llama, tmp_path, lines, error):
    f = _write(tmp_path, *lines)
    with pytest.raises(InputError, match=error):
        ct.from_jsonl(f, tiny_llama)


def test_from_jsonl_other_errors(tiny_llama, tmp_path):
    with pytest.raises(InputError, match="No circuit task file at"):
        ct.from_jsonl(tmp_path / "missing.jsonl", tiny_llama)
    with pytest.raises(InputError, match="Unknown metric 'kl'"):
        ct.from_jsonl(tmp_path / "missing.jsonl", tiny_llama, metric="kl")
    f = _write(tmp_path, {"clean": "ab", "corrupt": "cd", "answer": "x"})
    assert ct.from_jsonl(f, tiny_llama, metric="logprob").wrong == [[]]
    with pytest.raises(InputError, match="missing 'wrong'"):
        ct.from_jsonl(f, tiny_llama)


def test_load_task_names(tiny_llama):
    assert ct.TASKS == ("ioi", "induction", "greater-than")
    assert ct.shipped_tasks() == ["example_capitals"]
    assert shipped.is_shipped("circuits/example_capitals.jsonl")
    with pytest.raises(InputError, match=r"Unknown circuit task 'nope'; built-in: ioi, induction, greater-than; "
                                         r"shipped files: example_capitals"):
        ct.load_task("nope", tiny_llama)
    with pytest.raises(InputError, match="n must be"):
        ct.load_task("induction", tiny_llama, n=0)
    ts = ct.load_task("induction", tiny_llama, n=3, seed=5)
    assert len(ts) == 3 and ts.seed == 5 and ts.clean == ct.induction(tiny_llama, n=3, seed=5).clean
    assert len(ct.load_task("induction", tiny_llama)) == 16
    assert ct.load_task("greater_than", fake()).name == ct.load_task("greater-than", fake()).name == "greater-than"
    with pytest.raises(InputError, match="clean has"):  # a char tokenizer: France and Spain differ in length
        ct.load_task("example_capitals", tiny_llama)


def test_shipped_word_lists():
    names = [r["name"] for r in shipped.rows("circuits/ioi_names.jsonl")]
    assert len(names) == len(set(names)) == 150
    nouns = [r["noun"] for r in shipped.rows("circuits/greater_than_nouns.jsonl")]
    assert len(nouns) == len(set(nouns)) >= 20
    objects = [r["object"] for r in shipped.rows("circuits/ioi_objects.jsonl")]
    assert not [o for o in objects if o[0] in "aeiou"], "the templates say 'a {object}'"
    assert len(shipped.rows("circuits/example_capitals.jsonl")) == 12


# ---- real models ---------------------------------------------------------------------------------------
@pytest.fixture(params=["gemma", "smollm"])
def real(request):
    return request.getfixturevalue(request.param)


def scores(model, ts: ct.TaskSet, which: str = "clean") -> list[float]:
    """The task's metric per row, from token ids run as a left-padded Batch."""
    rows = getattr(ts, which)
    width = max(map(len, rows))
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=model.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
    last = all(p == [len(r) - 1] for p, r in zip(ts.positions, rows, strict=True))
    logits = model.run(Batch(ids, mask, [""] * len(rows)), logits="last" if last else "all").logits.float()
    out = []
    for i, r in enumerate(rows):
        lg = logits[i : i + 1] if last else logits[i, [width - len(r) + p for p in ts.positions[i]]]
        if ts.metric == "logprob":
            out.append(lg.log_softmax(-1)[torch.arange(len(ts.answers[i])), ts.answers[i]].mean().item())
        elif ts.metric == "logit_diff":
            out.append((lg[0, ts.answers[i]].mean() - lg[0, ts.wrong[i]].mean()).item())
        else:
            p = lg[0].softmax(-1)
            out.append((p[ts.answers[i]].sum() - p[ts.wrong[i]].sum()).item())
    return out


def mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.slow
def test_ioi_on_real_models(real):
    tok = real.tokenizer
    ts = ct.ioi(real, n=16, seed=0)
    assert_pairs_ok(ts)
    assert ts.meta["n_names"] >= 100
    for c, ans, wrong, r in zip(ts.clean, ts.answers, ts.wrong, ts.meta["rows"], strict=True):
        assert tok(r["io"], add_special_tokens=False)["input_ids"] == ans
        assert tok(r["s"], add_special_tokens=False)["input_ids"] == wrong
        assert c[r["io_pos"]] == ans[0] and c[r["s1_pos"]] == c[r["s2_pos"]] == wrong[0]
        assert c == tok(r["clean"])["input_ids"]
    assert ct.ioi(real, n=16, seed=0).clean == ts.clean and ct.ioi(real, n=16, seed=1).clean != ts.clean
    clean, corrupt = mean(scores(real, ts)), mean(scores(real, ts, "corrupt"))
    assert clean > 2 and corrupt < clean / 3, (clean, corrupt)
    flip = ct.ioi(real, n=16, seed=0, corrupt="flip")
    assert flip.clean == ts.clean and mean(scores(real, flip, "corrupt")) < 0


@pytest.mark.slow
def test_induction_on_real_models(real):
    ts = ct.induction(real, n=6, seq_len=20, seed=0)
    assert_pairs_ok(ts)
    assert ts.meta["pool"] == "round-trip" and ts.meta["pool_size"] > 4000
    b = int(ts.meta["bos"])
    assert b == (real.name.startswith("gemma"))  # Gemma adds <bos>, SmolLM2 adds nothing
    for c, pos, ans in zip(ts.clean, ts.positions, ts.answers, strict=True):
        assert pos == list(range(b + 20, b + 39)) and ans == [c[p + 1] for p in pos]
    assert ct.induction(real, n=6, seed=0).clean == ts.clean and ct.induction(real, n=6, seed=1).clean != ts.clean
    first = ct.TaskSet(name="first copy", metric="logprob", clean=ts.clean, corrupt=ts.clean,
                       positions=[list(range(b, b + 19))] * len(ts),
                       answers=[c[b + 1 : b + 20] for c in ts.clean], wrong=[[]] * len(ts))
    second, before, corrupt = mean(scores(real, ts)), mean(scores(real, first)), mean(scores(real, ts, "corrupt"))
    assert second > before + 5 and second > corrupt + 5, (second, before, corrupt)


@pytest.mark.slow
def test_greater_than_on_real_models(real):
    tok = real.tokenizer
    ts = ct.greater_than(real, n=16, seed=0)
    assert_pairs_ok(ts)
    assert ts.meta["split"] == "digit" and "equal tens digit is excluded" in ts.meta["metric_doc"]
    for c, x, ans, wrong, r in zip(ts.clean, ts.corrupt, ts.answers, ts.wrong, ts.meta["rows"], strict=True):
        assert [tok.decode([t]).strip() for t in c[-2:]] == ["1", "7"]
        assert c == tok(r["clean"])["input_ids"] and x == tok(r["corrupt"])["input_ids"]
        tens = r["yy"] // 10
        assert 1 <= tens <= 8
        assert sorted(int(tok.decode([a])) for a in ans) == list(range(tens + 1, 10))
        assert sorted(int(tok.decode([w])) for w in wrong) == list(range(tens))
    assert ct.greater_than(real, n=16, seed=0).clean == ts.clean
    assert ct.greater_than(real, n=16, seed=1).clean != ts.clean
    clean, corrupt = mean(scores(real, ts)), mean(scores(real, ts, "corrupt"))
    assert clean > 0.2 and clean > corrupt + 0.3, (clean, corrupt)


@pytest.mark.slow
def test_shipped_example_on_real_models(real):
    ts = ct.load_task("example_capitals", real)
    assert_pairs_ok(ts)
    assert len(ts) == 12 and ts.name == "example_capitals" and ts.texts(real.tokenizer)[0].startswith("The capital")
    assert len(ct.load_task("example_capitals", real, n=5)) == 5
    clean, corrupt = mean(scores(real, ts)), mean(scores(real, ts, "corrupt"))
    assert clean > 2 and corrupt < 0, (clean, corrupt)
