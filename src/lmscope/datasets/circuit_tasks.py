"""Circuit-discovery tasks: clean/corrupt prompt pairs as token ids, built for one tokenizer.

Three generators follow the papers, and any JSONL file of pairs works too:

    ioi(model)              Wang et al. 2022, indirect object identification (logit_diff)
    induction(model)        a random token sequence, repeated (logprob on the second copy)
    greater_than(model)     Hanna et al. 2023, "... from the year 1732 to the year 17" (prob_diff)
    from_jsonl(path, model) {"clean", "corrupt", "answer", "wrong"} lines (logit_diff by default)
    load_task("ioi" | "induction" | "greater-than" | "example_capitals" | "my.jsonl", model)

The generators are tokenizer-aware: IOI keeps only names that are one token (" Mary"),
greater-than reads how the tokenizer writes years (two-digit tokens like GPT-2, or one digit
per token like Gemma 3 and SmolLM2) and picks its answer tokens to match, and every pair whose
clean and corrupt prompts tokenize to different lengths is dropped, so a position means the
same thing in both. All randomness comes from `random.Random(seed)`: the same seed gives the
same task. Scoring the pairs is technique code; the metrics are defined on `TaskSet`.

The shipped word lists (`data/circuits/ioi_names.jsonl`, `ioi_places.jsonl`,
`ioi_objects.jsonl`, `greater_than_nouns.jsonl`) and the example task
(`example_capitals.jsonl`) are described in `data/README.md`.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

from lmscope.datasets import files, shipped
from lmscope.datasets.taskset import (  # TaskSet and METRICS are re-exported: they lived here
    METRICS,
    TaskSet,
    _examples,
)
from lmscope.engine.errors import InputError

if TYPE_CHECKING:
    from lmscope.engine.model import Model

log = logging.getLogger(__name__)

CIRCUITS_DIR = shipped.DATA_DIR / "circuits"
TASKS = ("ioi", "induction", "greater-than")
_VOCAB_FILES = ("ioi_names", "ioi_places", "ioi_objects", "greater_than_nouns")  # word lists, not tasks
_EXAMPLE_LINE = '{"clean": "...", "corrupt": "...", "answer": " Paris", "wrong": " Madrid"}'


# ---- tokenizer helpers -------------------------------------------------------------------------
def _enc(tok, text: str, special: bool = True) -> list[int]:
    return [int(i) for i in tok(text, add_special_tokens=special)["input_ids"]]


def _bos(tok) -> list[int]:
    """The ids the tokenizer puts before a text (BOS), [] if none."""
    with_, without = _enc(tok, "a"), _enc(tok, "a", special=False)
    k = len(with_) - len(without)
    return with_[:k] if k > 0 and with_[k:] == without else []


def _special_ids(tok) -> set[int]:
    """Ids that are not text: special and added tokens, BOS/EOS/PAD/UNK (HF tokenizers name them
    in different attributes; a toy tokenizer may have none of them)."""
    ids = set(getattr(tok, "all_special_ids", None) or ())
    ids |= {int(i) for i in getattr(tok, "added_tokens_decoder", None) or {}}  # Gemma's <unusedN>, image tokens
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if isinstance(getattr(tok, attr, None), int):
            ids.add(getattr(tok, attr))
    return ids | set(_bos(tok))


def _tok_name(model) -> str:
    return f"{getattr(model, 'name', 'the model')}'s tokenizer ({type(model.tokenizer).__name__})"


def _check_n(n, what: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{what} must be a whole number >= 1, got {n!r}.")


def _words(stem: str, key: str) -> list[str]:
    path = shipped.path(f"circuits/{stem}.jsonl")
    out = []
    for line, rec in files.read_jsonl(path, what="word list", example=f'{{"{key}": "..."}}'):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise InputError(f"{path}:{line}: expected a non-empty string {key!r}.")
        out.append(rec[key])
    return out


def _build(tok, rows: list[dict], name: str, metric: str, seed, meta: dict, positions=None) -> TaskSet:
    """A TaskSet from rows with "clean_ids", "corrupt_ids", "answers", "wrong" (+ JSON-able info)."""
    info = [{k: v for k, v in r.items() if not k.endswith("_ids") and k not in ("answers", "wrong")} for r in rows]
    meta = {**meta, "examples": _examples(info), "rows": info}
    return TaskSet(name=name, metric=metric, clean=[r["clean_ids"] for r in rows],
                   corrupt=[r["corrupt_ids"] for r in rows],
                   positions=positions or [[len(r["clean_ids"]) - 1] for r in rows],
                   answers=[r["answers"] for r in rows], wrong=[r["wrong"] for r in rows], seed=seed, meta=meta)


def _too_few(name: str, got: int, n: int, dropped: int, why: str) -> InputError:
    return InputError(f"Could build only {got} of {n} {name} pairs ({dropped} dropped: {why}); ask for fewer "
                      "(n) or use another model.")


# ---- IOI -----------------------------------------------------------------------------------------
#: {A} and {B} are the first two names, {C} the repeated one (S2). ABBA: A=IO, B=S; BABA: A=S, B=IO.
IOI_TEMPLATES = (
    "When {A} and {B} went to the {place}, {C} gave a {object} to",
    "Then, {A} and {B} went to the {place}. {C} gave a {object} to",
    "Then, {A} and {B} had a long argument. Afterwards {C} said to",
    "After {A} and {B} went to the {place}, {C} gave a {object} to",
    "While {A} and {B} were working at the {place}, {C} gave a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {C} gave it to",
    "The {place} {A} and {B} went to had a {object}. {C} gave it to",
    "When {A} and {B} got a {object} at the {place}, {C} decided to give it to",
)


def ioi(model: Model, n: int = 32, seed: int = 0, corrupt: str = "abc") -> TaskSet:
    """Indirect object identification (Wang et al. 2022): "When Mary and John went to the
    store, John gave a drink to" -> " Mary" (the IO) rather than " John" (the subject S).

    Each row draws a template (`IOI_TEMPLATES`) and an order: the IO named first (ABBA) or the
    subject first (BABA).
    Only names that are one token with a leading space in this tokenizer are used, and a row
    is kept only if IO appears once and S twice, as single tokens, in the clean prompt.

    Args:
        model: Its tokenizer is all that is used.
        n: Number of pairs.
        seed: Seed of every random choice.
        corrupt: "abc": the same template and place with three other, distinct names (no
            name repeats, so the IO/S structure is gone); "flip": the repeated name becomes
            the IO (the correct answer flips to S). The clean rows do not depend on it.

    Returns:
        A `logit_diff` TaskSet: answers `[IO id]`, wrong `[S id]`, read at the last token.
        `meta["rows"]` gives each row's names and the columns of IO, S1 and S2.
    """
    _check_n(n)
    if corrupt not in ("abc", "flip"):
        raise InputError(f"corrupt must be 'abc' (three new names) or 'flip' (S2 becomes the IO), got {corrupt!r}.")
    tok = model.tokenizer
    shipped_names = _words("ioi_names", "name")
    name_id = {}
    for nm in shipped_names:
        ids = _enc(tok, " " + nm, special=False)
        if len(ids) == 1:
            name_id[nm] = ids[0]
    names = list(name_id)
    need = 5 if corrupt == "abc" else 3
    if len(names) < need:
        eg = shipped_names[0]
        raise InputError(
            f"IOI needs at least {need} names that are one token with a leading space (' {eg}') in "
            f"{_tok_name(model)}; {len(names)} of the {len(shipped_names)} shipped names are "
            f"(' {eg}' is {len(_enc(tok, ' ' + eg, special=False))} tokens). Use a model with a word-level tokenizer"
            + (", or corrupt='flip' (needs 3)." if corrupt == "abc" and len(names) >= 3 else "."))
    places, objects = _words("ioi_places", "place"), _words("ioi_objects", "object")
    rng = random.Random(seed)
    abc_rng = random.Random(f"ioi-abc-{seed}")  # its own stream: "abc" and "flip" share the clean rows
    rows, dropped = [], 0
    while len(rows) < n:
        if dropped > 10 * n + 100:
            raise _too_few("IOI", len(rows), n, dropped, "names not single tokens in context, or unequal lengths")
        t = rng.randrange(len(IOI_TEMPLATES))
        order = rng.choice(("ABBA", "BABA"))
        io, s = rng.sample(names, 2)
        fill = {"place": rng.choice(places), "object": rng.choice(objects)}
        a, b = (io, s) if order == "ABBA" else (s, io)
        clean = IOI_TEMPLATES[t].format(A=a, B=b, C=s, **fill)
        if corrupt == "abc":
            x, y, z = abc_rng.sample([nm for nm in names if nm not in (io, s)], 3)
            bad = IOI_TEMPLATES[t].format(A=x, B=y, C=z, **fill)
        else:
            bad = IOI_TEMPLATES[t].format(A=a, B=b, C=io, **fill)
        ci, xi = _enc(tok, clean), _enc(tok, bad)
        at_io = [j for j, v in enumerate(ci) if v == name_id[io]]
        at_s = [j for j, v in enumerate(ci) if v == name_id[s]]
        first_io = order == "ABBA"
        if (len(ci) != len(xi) or len(at_io) != 1 or len(at_s) != 2 or (at_io[0] < at_s[0]) != first_io
                or at_s[1] < at_io[0]):
            dropped += 1
            continue
        rows.append({"clean_ids": ci, "corrupt_ids": xi, "answers": [name_id[io]], "wrong": [name_id[s]],
                     "template": t, "order": order, "io": " " + io, "s": " " + s, "io_pos": at_io[0],
                     "s1_pos": at_s[0], "s2_pos": at_s[1], "clean": clean, "corrupt": bad})
    doc = (f"Logit of the indirect object's name token (e.g. {rows[0]['io']!r}) minus the subject's "
           f"({rows[0]['s']!r}) after the final 'to'; > 0 means the model completes with the IO. "
           f"{len(names)} of {len(shipped_names)} shipped names are one token in {_tok_name(model)}.")
    meta = {"n": n, "corrupt": corrupt, "templates": list(IOI_TEMPLATES), "n_names": len(names),
            "dropped": dropped, "metric_doc": doc}
    return _build(tok, rows, "ioi", "logit_diff", seed, meta)


# ---- induction -----------------------------------------------------------------------------------
def _token_pool(model: Model, rng: random.Random, k: int, size: int = 5000) -> tuple[list[int], str]:
    """Ordinary tokens from a seeded sample of `size` vocabulary ids: printable, not blank, not
    special or added, and re-encoding their text gives the id back. Falls back (with a warning)
    to the printable non-special ids when fewer than `k` round-trip (toy tokenizers)."""
    tok = model.tokenizer
    vocab = min(len(tok), model.d_vocab) if hasattr(tok, "__len__") else model.d_vocab
    cand = rng.sample(range(vocab), min(vocab, size))
    special = _special_ids(tok)
    texts = tok.batch_decode([[i] for i in cand])
    plain = [(i, t) for i, t in zip(cand, texts, strict=True) if i not in special and t.strip() and t.isprintable()]
    enc = tok([t for _, t in plain], add_special_tokens=False)["input_ids"] if plain else []
    pool = [i for (i, _), e in zip(plain, enc, strict=True) if [int(v) for v in e] == [i]]
    if len(pool) >= k:
        return pool, "round-trip"
    log.warning("Only %d of %d sampled token ids of %s round-trip through decode/encode; sampling induction "
                "sequences from the %d printable non-special ids instead.", len(pool), len(cand),
                _tok_name(model), len(plain))
    return [i for i, _ in plain], "printable non-special (too few tokens round-trip)"


def induction(model: Model, n: int = 16, seq_len: int = 20, seed: int = 0) -> TaskSet:
    """Repeated random tokens: BOS + s + s, where s is `seq_len` distinct random tokens.

    An induction head predicts each token of the second copy from the first. The corrupt row
    is BOS + s + s' with s' another sequence sharing no token with s, so nothing repeats.
    Tokens are drawn from a seeded sample of ordinary vocabulary entries (see the pool rule in
    `meta["pool"]`).

    Args:
        model: Its tokenizer (and vocabulary size and context length) are used.
        n: Number of pairs.
        seq_len: Length of each copy (>= 2).
        seed: Seed of the token pool and the sequences.

    Returns:
        A `logprob` TaskSet. With b = 1 if the tokenizer adds a BOS (else 0), positions are
        the columns b+seq_len .. b+2*seq_len-2 of the second copy, and
        `answers[i][j] == clean[i][positions[i][j] + 1]`: every token of the second copy but
        its first (which nothing predicts).
    """
    _check_n(n)
    _check_n(seq_len, "seq_len")
    if seq_len < 2:
        raise InputError(f"seq_len must be >= 2 so the second copy has a token to predict, got {seq_len}.")
    tok = model.tokenizer
    bos = _bos(tok)
    total = len(bos) + 2 * seq_len
    if model.n_ctx and total > model.n_ctx:
        raise InputError(f"Induction rows of seq_len={seq_len} are {total} tokens but {model.name} takes at most "
                         f"{model.n_ctx}; use seq_len <= {(model.n_ctx - len(bos)) // 2}.")
    rng = random.Random(seed)
    pool, how = _token_pool(model, rng, 2 * seq_len)
    if len(pool) < 2 * seq_len:
        raise InputError(f"Induction needs {2 * seq_len} distinct ordinary tokens for seq_len={seq_len}; "
                         f"{_tok_name(model)} gave {len(pool)}. Use a smaller seq_len.")
    b = len(bos)
    positions = list(range(b + seq_len, b + 2 * seq_len - 1))
    rows = []
    for _ in range(n):
        first = rng.sample(pool, seq_len)
        used = set(first)
        other = rng.sample([t for t in pool if t not in used], seq_len)
        clean, bad = bos + first + first, bos + first + other
        rows.append({"clean_ids": clean, "corrupt_ids": bad, "answers": [clean[p + 1] for p in positions],
                     "wrong": [], "clean": tok.decode(clean, skip_special_tokens=True),
                     "corrupt": tok.decode(bad, skip_special_tokens=True)})
    doc = (f"Mean log-probability of each token of the repeated copy given the tokens before it (columns "
           f"{positions[0]}..{positions[-1]}); near 0 is perfect induction, about -log({len(pool)}) is guessing "
           "from the pool.")
    meta = {"n": n, "seq_len": seq_len, "bos": bool(bos), "pool": how, "pool_size": len(pool), "metric_doc": doc}
    return _build(tok, rows, "induction", "logprob", seed, meta, positions=[list(positions) for _ in rows])


# ---- greater-than --------------------------------------------------------------------------------
GT_TEMPLATE = "The {noun} lasted from the year 17{yy:02d} to the year 17"


def _year_split(model: Model, noun: str) -> tuple[str, dict[int, int]]:
    """How the tokenizer continues "... to the year 17": ("digit", {d: id of d}) when each
    digit is a token, ("pair", {ZZ: id of "ZZ"}) when two-digit tokens follow a "17" token."""
    tok = model.tokenizer
    prompt = GT_TEMPLATE.format(noun=noun, yy=32)
    base = _enc(tok, prompt, special=False)
    last = [tok.decode([i]) for i in base[-2:]]
    rest = {}
    for zz in range(100):
        e = _enc(tok, prompt + f"{zz:02d}", special=False)
        rest[zz] = e[len(base):] if e[: len(base)] == base else None
    digit = {d: _enc(tok, str(d), special=False) for d in range(10)}
    if all(len(v) == 1 for v in digit.values()) and [s.strip() for s in last] == ["1", "7"]:
        digit = {d: v[0] for d, v in digit.items()}
        if all(rest[zz] == [digit[zz // 10], digit[zz % 10]] for zz in range(100)):
            return "digit", digit
    pair = {zz: ids[0] for zz in range(100) if len(ids := _enc(tok, f"{zz:02d}", special=False)) == 1}
    if last[-1].strip() == "17" and sum(rest[zz] == [pair.get(zz)] for zz in range(100)) >= 50:
        return "pair", pair
    split = [tok.decode([i]) for i in _enc(tok, " 1732", special=False)]
    raise InputError(
        f"greater-than supports tokenizers that write a year 17YY as '17' + 'YY' (two-digit tokens, like GPT-2) or "
        f"one digit per token (like Gemma 3 and SmolLM2); {_tok_name(model)} splits ' 1732' as {split} and "
        f"ends '... the year 17' with {last}. Use from_jsonl with your own pairs instead.")


def greater_than(model: Model, n: int = 32, seed: int = 0) -> TaskSet:
    """Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17";
    the corrupt start year is 1701, which leaves no later-vs-earlier information.

    With two-digit tokens (GPT-2), the answers are the tokens "ZZ" > YY and the wrong ones
    "ZZ" < YY (every ZZ in 00..99 that is one token). With one digit per token (Gemma 3,
    SmolLM2), the next token is the end year's tens digit: answers are the digits above YY's
    tens digit, wrong the digits below it, and YY is drawn from 10..89 so both sides exist.
    The equal tens digit is ambiguous and left out, so the metric is a first-digit proxy of
    P(end > start) - P(end < start).

    Args:
        model: Its tokenizer is all that is used.
        n: Number of pairs.
        seed: Seed of the nouns and start years.

    Returns:
        A `prob_diff` TaskSet read at the last token (the "17" of the end year).
        `meta["split"]` is "pair" or "digit"; `meta["rows"]` gives each row's noun and YY.

    Raises:
        InputError: if the tokenizer splits years any other way (e.g. three-digit chunks).
    """
    _check_n(n)
    tok = model.tokenizer
    nouns = _words("greater_than_nouns", "noun")
    mode, ids = _year_split(model, nouns[0])
    if mode == "digit":
        starts = list(range(10, 90))
        sides = {yy: ([ids[d] for d in range(yy // 10 + 1, 10)], [ids[d] for d in range(yy // 10)]) for yy in starts}
        doc = (f"Probability that the next token (the end year's tens digit, as {_tok_name(model)} writes years one "
               "digit per token) is above the start year's tens digit minus below it: a first-digit proxy of "
               "P(end > start) - P(end < start); the equal tens digit is excluded (ambiguous).")
    else:
        starts = [yy for yy in range(2, 99) if yy in ids and 1 in ids
                  and any(z > yy for z in ids) and any(z < yy for z in ids)]
        sides = {yy: ([ids[z] for z in sorted(ids) if z > yy], [ids[z] for z in sorted(ids) if z < yy]) for yy in starts}
        doc = (f"Probability of the two-digit end-year tokens above the start year YY minus those below it "
               f"({len(ids)} of 00..99 are one token in {_tok_name(model)}): P(end > start) - P(end < start), "
               "the equal year excluded.")
    rng = random.Random(seed)
    rows, dropped = [], 0
    while len(rows) < n:
        if dropped > 10 * n + 100:
            raise _too_few("greater-than", len(rows), n, dropped, "clean and corrupt lengths differ")
        noun, yy = rng.choice(nouns), rng.choice(starts)
        clean, bad = GT_TEMPLATE.format(noun=noun, yy=yy), GT_TEMPLATE.format(noun=noun, yy=1)
        ci, xi = _enc(tok, clean), _enc(tok, bad)
        if len(ci) != len(xi) or (mode == "pair" and (ids[yy] not in ci or ids[1] not in xi)):
            dropped += 1
            continue
        ans, wrong = sides[yy]
        rows.append({"clean_ids": ci, "corrupt_ids": xi, "answers": ans, "wrong": wrong, "noun": noun,
                     "yy": yy, "clean": clean, "corrupt": bad})
    meta = {"n": n, "split": mode, "template": GT_TEMPLATE, "corrupt_yy": 1, "dropped": dropped, "metric_doc": doc}
    return _build(tok, rows, "greater-than", "prob_diff", seed, meta)


# ---- user files ----------------------------------------------------------------------------------
def _side(rec: dict, key: str, where: str) -> list[str]:
    v = rec[key]
    vals = [v] if isinstance(v, str) else v
    if not isinstance(vals, list) or not vals or not all(isinstance(s, str) and s.strip() for s in vals):
        raise InputError(f"{where}: {key!r} must be a non-empty string or a list of them, got {json.dumps(v)[:80]}.")
    return vals


def from_jsonl(path: str | Path, model: Model, metric: str = "logit_diff") -> TaskSet:
    """A user's task: one JSON object per line,
    `{"clean": str, "corrupt": str, "answer": str | [str], "wrong": str | [str]}`.

    Answers are scored by their first token (a leading space belongs in the text, " Paris");
    a multi-token answer logs a warning. The metric reads the last token of each prompt.

    Args:
        path: The JSONL file.
        model: Its tokenizer is all that is used.
        metric: "logit_diff", "prob_diff", or "logprob" (the first answer's first token is the
            target; "wrong" is then optional and unused).

    Raises:
        InputError: naming the file and line, for a missing key, an empty text, clean and
            corrupt prompts of different token lengths, an answer sharing its first token
            with a wrong one, or a file without rows.
    """
    if metric not in METRICS:
        raise InputError(f"Unknown metric {metric!r}; expected one of {', '.join(METRICS)}.")
    p = Path(path).expanduser()
    tok = model.tokenizer
    need = ("clean", "corrupt", "answer") + (() if metric == "logprob" else ("wrong",))
    rows = []
    for line, rec in files.read_jsonl(p, what="circuit task file", example=_EXAMPLE_LINE):
        where = f"{p}:{line}"
        missing = [k for k in need if k not in rec]
        if missing:
            raise InputError(f"{where}: missing {', '.join(map(repr, missing))}; each line needs {', '.join(need)} "
                             f"like {_EXAMPLE_LINE}.")
        for k in ("clean", "corrupt"):
            if not isinstance(rec[k], str) or not rec[k].strip():
                raise InputError(f"{where}: {k!r} must be non-empty text.")
        ci, xi = _enc(tok, rec["clean"]), _enc(tok, rec["corrupt"])
        if len(ci) != len(xi):
            raise InputError(f"{where}: clean has {len(ci)} tokens, corrupt has {len(xi)}; corrupt prompts must "
                             "tokenize to the same length so positions align.")
        sides = {}
        for k in need[2:]:
            sides[k] = []
            for text in _side(rec, k, where):
                ids = _enc(tok, text, special=False)
                if not ids:
                    raise InputError(f"{where}: {k} {text!r} encodes to no tokens.")
                if len(ids) > 1:
                    log.warning("%s: %s %r is %d tokens; its first, %r, is scored.", where, k, text, len(ids),
                                tok.decode(ids[:1]))
                if ids[0] not in sides[k]:
                    sides[k].append(ids[0])
        shared = set(sides["answer"]) & set(sides.get("wrong", ()))
        if shared:
            raise InputError(f"{where}: answer and wrong share the first token "
                             f"{', '.join(repr(tok.decode([i])) for i in sorted(shared))}; pick answers whose "
                             "first tokens differ.")
        rows.append({"clean_ids": ci, "corrupt_ids": xi, "answers": sides["answer"][:1] if metric == "logprob"
                     else sides["answer"], "wrong": sides.get("wrong", []) if metric != "logprob" else [],
                     "line": line, "clean": rec["clean"], "corrupt": rec["corrupt"]})
    if not rows:
        raise InputError(f"{p} holds no task rows; expected JSON lines like {_EXAMPLE_LINE}.")
    doc = {"logit_diff": "Mean logit of the answers' first tokens minus mean logit of the wrong ones' at the last "
                         "token.",
           "prob_diff": "Summed probability of the answers' first tokens minus that of the wrong ones' at the last "
                        "token.",
           "logprob": "Log-probability of the answer's first token at the last token."}[metric]
    meta = {"path": str(p), "metric_doc": doc + f" Tokens are {_tok_name(model)}'s."}
    return _build(tok, rows, p.stem, metric, None, meta)


def shipped_tasks() -> list[str]:
    """Names of the task files shipped in `lmscope/datasets/data/circuits/` (e.g. example_capitals)."""
    return sorted(p.stem for p in CIRCUITS_DIR.glob("*.jsonl") if p.stem not in _VOCAB_FILES)


def load_task(name_or_path: str | Path, model: Model, n: int | None = None, seed: int = 0) -> TaskSet:
    """A task by name or path.

    Args:
        name_or_path: "ioi", "induction", "greater-than" (or "greater_than"), a shipped task
            file's name ("example_capitals"), or a path to a .jsonl file (see `from_jsonl`).
        model: The model whose tokenizer the task is built for.
        n: Number of pairs; None uses the generator's default (all rows of a file). For a
            file, the first n rows.
        seed: Seed of the generators (files are read in order).
    """
    spec = str(name_or_path)
    if n is not None:
        _check_n(n)
    gens = {"ioi": ioi, "induction": induction, "greater-than": greater_than, "greater_than": greater_than}
    if spec in gens:
        return gens[spec](model, seed=seed) if n is None else gens[spec](model, n=n, seed=seed)
    path = Path(spec).expanduser()
    if spec in shipped_tasks():
        path = CIRCUITS_DIR / f"{spec}.jsonl"
    elif not (path.is_file() or path.suffix == ".jsonl"):
        raise InputError(f"Unknown circuit task {spec!r}; built-in: {', '.join(TASKS)}; shipped files: "
                         f"{', '.join(shipped_tasks())}; or pass the path of a .jsonl file of clean/corrupt pairs.")
    task = from_jsonl(path, model)
    return task.subset(slice(0, n)) if n is not None and n < len(task) else task
