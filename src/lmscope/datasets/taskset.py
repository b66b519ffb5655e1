"""The task container of circuit discovery: `TaskSet`, clean/corrupt prompt pairs as token ids
with the answer tokens its metric reads (`METRICS`), and the row operations (`subset`, `split`)
that keep the per-row metadata aligned. The generators that build them live in
`circuit_tasks`, which re-exports both names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from lmscope.engine.errors import InputError

METRICS = ("logit_diff", "prob_diff", "logprob")


@dataclass
class TaskSet:
    """Clean/corrupt prompt pairs of one task, as token ids, with the metric's answer tokens.

    The metric (computed by technique code) reads the next-token distribution of a row at
    each of its `positions`:

    - `logit_diff`: mean logit of `answers[i]` minus mean logit of `wrong[i]`.
    - `prob_diff`: sum of the softmax probabilities of `answers[i]` minus the sum over `wrong[i]`.
    - `logprob`: mean over positions of the log-softmax of the target `answers[i][j]` at
      `positions[i][j]`.

    The corrupt rows are scored with the same answer tokens as their clean rows.

    Attributes:
        name: "ioi", "induction", "greater-than", or the JSONL file's stem.
        metric: "logit_diff", "prob_diff" or "logprob".
        clean: Token ids per prompt, exactly as the model gets them (BOS included when the
            tokenizer adds one).
        corrupt: Token ids per corrupt prompt, the same length as its clean row.
        positions: Per row, the columns (into the unpadded row) where the metric reads the
            next-token distribution; `[len(row) - 1]` for single-answer tasks.
        answers: Per row, the correct side's token ids (logit_diff, prob_diff), or the target
            token at each metric position, aligned with `positions[i]` (logprob).
        wrong: Per row, the other side's token ids; `[]` for logprob.
        seed: The generator's seed (None for a user file).
        meta: Generator parameters, templates, `metric_doc` (one sentence: what the metric
            measures for this tokenizer), `examples` (the first three rows' texts) and, when
            present, `rows` (one JSON-able dict per row, e.g. the names and their columns),
            which `subset` and `split` keep aligned with the rows.
    """

    name: str
    metric: str
    clean: list[list[int]]
    corrupt: list[list[int]]
    positions: list[list[int]]
    answers: list[list[int]]
    wrong: list[list[int]]
    seed: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InputError(f"Unknown metric {self.metric!r} for task {self.name!r}; expected one of "
                             f"{', '.join(METRICS)}.")
        n = len(self.clean)
        for what in ("corrupt", "positions", "answers", "wrong"):
            if len(getattr(self, what)) != n:
                raise InputError(f"Task {self.name!r} has {n} clean rows but {len(getattr(self, what))} {what}; "
                                 "give one per row.")
        for i in range(n):
            row, pos = self.clean[i], self.positions[i]
            if len(self.corrupt[i]) != len(row):
                raise InputError(f"Task {self.name!r} row {i}: clean has {len(row)} tokens, corrupt has "
                                 f"{len(self.corrupt[i])}; the pair must have the same length.")
            if not pos or any(not 0 <= p < len(row) for p in pos):
                raise InputError(f"Task {self.name!r} row {i}: positions {pos} must be non-empty columns "
                                 f"0..{len(row) - 1}.")
            if self.metric == "logprob" and len(self.answers[i]) != len(pos):
                raise InputError(f"Task {self.name!r} row {i}: logprob needs one target per position, got "
                                 f"{len(self.answers[i])} targets for {len(pos)} positions.")
            if self.metric != "logprob" and not (self.answers[i] and self.wrong[i]):
                raise InputError(f"Task {self.name!r} row {i}: {self.metric} needs non-empty answers and wrong.")

    def __len__(self) -> int:
        return len(self.clean)

    def texts(self, tokenizer, which: str = "clean") -> list[str]:
        """The prompts decoded for display (special tokens such as BOS left out).

        Args:
            tokenizer: The tokenizer the task was built with (`model.tokenizer`).
            which: "clean" or "corrupt".
        """
        if which not in ("clean", "corrupt"):
            raise InputError(f"which must be 'clean' or 'corrupt', got {which!r}.")
        return [tokenizer.decode(r, skip_special_tokens=True) for r in getattr(self, which)]

    def subset(self, idx: Sequence[int] | slice) -> TaskSet:
        """The rows `idx` (a list of row indices or a slice), with `meta["rows"]` and
        `meta["examples"]` following them."""
        keep = list(range(len(self)))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        bad = [i for i in keep if not -len(self) <= i < len(self)]
        if bad:
            raise InputError(f"Rows {bad} are out of range for task {self.name!r} ({len(self)} rows).")
        meta = dict(self.meta)
        if len(meta.get("rows", ())) == len(self):
            meta["rows"] = [self.meta["rows"][i] for i in keep]
            meta["examples"] = _examples(meta["rows"])
        cols = {k: [list(getattr(self, k)[i]) for i in keep] for k in ("clean", "corrupt", "positions", "answers",
                                                                          "wrong")}
        return replace(self, **cols, meta=meta)

    def split(self, n_first: int) -> tuple[TaskSet, TaskSet]:
        """(the first `n_first` rows, the rest): e.g. a discovery half and a held-out half."""
        if not 0 < n_first < len(self):
            raise InputError(f"Task {self.name!r} has {len(self)} rows; n_first must be 1..{len(self) - 1}, "
                             f"got {n_first}.")
        return self.subset(slice(0, n_first)), self.subset(slice(n_first, None))

    def to_dict(self) -> dict:
        """JSON-able summary: name, metric, n, seed, meta (without the per-row `rows`) and the
        first three clean/corrupt texts."""
        meta = {k: v for k, v in self.meta.items() if k not in ("rows", "examples")}
        return {"name": self.name, "metric": self.metric, "n": len(self), "seed": self.seed, "meta": meta,
                "examples": list(self.meta.get("examples") or _examples(self.meta.get("rows", [])))}


def _examples(rows: list[dict]) -> list[dict]:
    return [{"clean": r["clean"], "corrupt": r["corrupt"]} for r in rows[:3] if "clean" in r]
