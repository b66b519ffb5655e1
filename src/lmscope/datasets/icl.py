"""In-context-learning tasks: word -> word pairs, few-shot / zero-shot prompts, answer tokens.

A task is a list of `{"input", "output"}` pairs (JSONL). The shipped ones live in
`lmscope/datasets/data/tasks/*.jsonl` (antonym, country_capital, english_french, present_past,
singular_plural, capitalize, lowercase_first_letter, country_currency); any JSONL file of the
same shape works too. `copy` (x -> x) is derived in code from the shipped words; it is the
"identity" part that composition subtracts (see `lmscope.function_vectors.core.compose`).

Prompts follow a `Template`. The default ("arrow") is

    hot -> cold
    big -> small
    fast ->

and the answer is scored by its **first token** (" slow" here): top-1 of the next-token
distribution must equal the first token of `answer.format(y=...)` (Todd et al. 2023 and
Hendel et al. 2023 score the same way).

    task = load_task("antonym")
    train, test = task.split(n_test=32, seed=0)
    prompts = few_shot_prompts(train, test.inputs, shots=5, seed=0)
    ids = answer_ids(model, test.inputs, test.outputs)

Scoring prompts against those ids is technique code: `lmscope.function_vectors.scoring`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmscope.datasets import files, shipped
from lmscope.engine.errors import InputError

if TYPE_CHECKING:
    from lmscope.engine.model import Model

log = logging.getLogger(__name__)

TASKS_DIR = shipped.DATA_DIR / "tasks"

#: Tasks defined by a string rule, so they can be composed onto any output (antonym then
#: capitalize: "hot" -> "Cold"). Tasks without a rule compose through their pair lookup.
RULES: dict[str, Callable[[str], str]] = {
    "capitalize": lambda s: s[:1].upper() + s[1:],
    "lowercase_first_letter": lambda s: s[:1].lower(),
    "copy": lambda s: s,
}


@dataclass(frozen=True, kw_only=True)
class Template:
    """How a demonstration and a query are written.

    Attributes:
        query: Format of the query part; `{x}` is the input. The prompt ends with it.
        answer: Format of the answer that follows the query; `{y}` is the output. Its first
            token is the scored target (so a leading space belongs here).
        sep: Between demonstrations (and before the final query).
    """

    query: str = "{x} ->"
    answer: str = " {y}"
    sep: str = "\n"

    def __post_init__(self) -> None:
        if "{x}" not in self.query or "{y}" not in self.answer:
            raise InputError(f"A template needs '{{x}}' in query and '{{y}}' in answer, got {self.query!r}, "
                             f"{self.answer!r}.")

    def demo(self, x: str, y: str) -> str:
        return self.query.format(x=x) + self.answer.format(y=y)

    def prompt(self, demos: Sequence[tuple[str, str]], x: str) -> str:
        """Demonstrations then the query: 'a -> b\\nc -> d\\nx ->'."""
        return self.sep.join([*(self.demo(a, b) for a, b in demos), self.query.format(x=x)])


#: Named templates: "arrow" (default, 'x -> y'), "qa" (Todd et al.: 'Q: x\nA: y\n\n'),
#: "hendel" (Hendel et al.: 'example:x->y').
TEMPLATES = {
    "arrow": Template(),
    "qa": Template(query="Q: {x}\nA:", answer=" {y}", sep="\n\n"),
    "hendel": Template(query="example:{x}->", answer="{y}", sep="\n"),
}


def get_template(template: str | Template) -> Template:
    if isinstance(template, Template):
        return template
    if template not in TEMPLATES:
        raise InputError(f"Unknown template {template!r}; known: {', '.join(TEMPLATES)} (or pass a Template).")
    return TEMPLATES[template]


@dataclass(frozen=True)
class Task:
    """Input -> output pairs, optionally with the string rule that generates them."""

    name: str
    pairs: tuple[tuple[str, str], ...]
    rule: Callable[[str], str] | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def inputs(self) -> list[str]:
        return [x for x, _ in self.pairs]

    @property
    def outputs(self) -> list[str]:
        return [y for _, y in self.pairs]

    def sha256(self) -> str:
        """Hash of the pairs (one canonical JSON line each): identifies the data of a vector."""
        h = hashlib.sha256()
        for x, y in self.pairs:
            h.update(json.dumps({"input": x, "output": y}, ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()

    def apply(self, x: str) -> str | None:
        """The output for `x`: by rule when the task has one, else by lookup (None if absent)."""
        if self.rule is not None:
            return self.rule(x)
        return dict(self.pairs).get(x)

    def subset(self, keep: Sequence[int], name: str | None = None) -> Task:
        return Task(name or self.name, tuple(self.pairs[i] for i in keep), self.rule)

    def split(self, n_test: int, seed: int = 0) -> tuple[Task, Task]:
        """(train, test): `n_test` held-out pairs drawn with `seed`; the rest is the demo pool."""
        if not 0 < n_test < len(self):
            raise InputError(f"Task {self.name!r} has {len(self)} pairs; n_test must be 1..{len(self) - 1}, "
                             f"got {n_test}.")
        idx = list(range(len(self)))
        random.Random(seed).shuffle(idx)
        test = sorted(idx[:n_test])
        train = sorted(idx[n_test:])
        return self.subset(train), self.subset(test)

    def without_inputs(self, inputs: Sequence[str]) -> Task:
        drop = set(inputs)
        return self.subset([i for i, (x, _) in enumerate(self.pairs) if x not in drop])

    def then(self, other: Task) -> Task:
        """Function composition: x -> other(self(x)), keeping the pairs where it is defined
        (antonym.then(capitalize): 'hot' -> 'Cold')."""
        pairs = []
        for x, y in self.pairs:
            z = other.apply(y)
            if z is not None:
                pairs.append((x, z))
        if not pairs:
            raise InputError(f"{self.name} then {other.name} is defined on no pair: no output of {self.name} is an "
                             f"input of {other.name}, and {other.name} has no rule.")
        return Task(f"{self.name}_then_{other.name}", tuple(pairs))


def list_tasks() -> list[str]:
    """Names of the shipped tasks (plus the derived `copy`)."""
    return sorted([p.stem for p in TASKS_DIR.glob("*.jsonl")] + ["copy"])


def _read_jsonl(path: Path, name: str) -> list[tuple[str, str]]:
    pairs = []
    for n, row in files.read_jsonl(path, what="task file", objects=False):
        if not isinstance(row, dict) or not isinstance(row.get("input"), str) or not isinstance(row.get("output"), str):
            raise InputError(f"{path}:{n}: expected an object with string fields 'input' and 'output', "
                             f"got {json.dumps(row)[:200]}.")
        if not row["input"].strip() or not row["output"].strip():
            raise InputError(f"{path}:{n}: 'input' and 'output' must be non-empty.")
        pairs.append((row["input"], row["output"]))
    if not pairs:
        raise InputError(f"{path} holds no pairs; expected JSONL lines like {{\"input\": \"hot\", \"output\": \"cold\"}}.")
    return pairs


def load_task(name_or_path: str | Path) -> Task:
    """A shipped task by name (`antonym`), the derived `copy`, or a JSONL file of
    `{"input", "output"}` lines. Duplicate inputs keep their first output."""
    spec = str(name_or_path)
    if spec == "copy":
        words = _read_jsonl(TASKS_DIR / "antonym.jsonl", "antonym") + _read_jsonl(TASKS_DIR / "capitalize.jsonl", "x")
        seen = dict.fromkeys(x for x, _ in words)
        return Task("copy", tuple((w, w) for w in seen), RULES["copy"])
    path = Path(spec).expanduser()
    if path.suffix == ".jsonl" or path.is_file():
        if not path.is_file():
            raise InputError(f"No task file at {path}; expected a JSONL file of {{\"input\", \"output\"}} lines.")
        name = path.stem
    else:
        path = TASKS_DIR / f"{spec}.jsonl"
        if not path.is_file():
            raise InputError(f"Unknown task {spec!r}; shipped tasks: {', '.join(list_tasks())}, or pass a .jsonl path.")
        name = spec
    pairs = _read_jsonl(path, name)
    first = dict(reversed(pairs))  # input -> its first output
    uniq = list(dict.fromkeys(x for x, _ in pairs))
    return Task(name, tuple((x, first[x]) for x in uniq), RULES.get(name))


# ---- prompts -------------------------------------------------------------------------------
def few_shot_prompts(pool: Task, queries: Sequence[str], *, shots: int, seed: int = 0,
                     template: str | Template = "arrow", shuffle_labels: bool = False) -> list[str]:
    """One prompt per query with `shots` demonstrations drawn (seeded) from `pool`, never the
    query itself. `shuffle_labels=True` permutes the demonstrations' outputs among them (the
    corrupted prompts of Todd et al.: same format, no task)."""
    tpl = get_template(template)
    if shots < 0:
        raise InputError(f"shots must be >= 0, got {shots}.")
    rng = random.Random(seed)
    out = []
    for q in queries:
        cands = [p for p in pool.pairs if p[0] != q]
        if len(cands) < shots:
            raise InputError(f"Task {pool.name!r} has {len(cands)} demonstrations besides {q!r}; {shots} shots asked.")
        demos = rng.sample(cands, shots)
        if shuffle_labels and shots > 1:
            ys = [y for _, y in demos]
            for _ in range(10):  # avoid leaving the labels in place (a derangement when possible)
                rng.shuffle(ys)
                if all(y != d[1] for y, d in zip(ys, demos, strict=True)):
                    break
            demos = [(x, y) for (x, _), y in zip(demos, ys, strict=True)]
        out.append(tpl.prompt(demos, q))
    return out


def zero_shot_prompts(queries: Sequence[str], template: str | Template = "arrow") -> list[str]:
    """The query alone: 'fast ->'."""
    tpl = get_template(template)
    return [tpl.prompt([], q) for q in queries]


def _ids(model: Model, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_ids(model: Model, queries: Sequence[str], answers: Sequence[str],
               template: str | Template = "arrow") -> Tensor:
    """First token of each answer as the model would read it after its query: the token that
    follows the query's tokens in `query + answer` (falls back to the answer alone when the
    tokenizer merges across the boundary). LongTensor [n]."""
    tpl = get_template(template)
    out = []
    for q, a in zip(queries, answers, strict=True):
        head = _ids(model, tpl.query.format(x=q))
        full = _ids(model, tpl.query.format(x=q) + tpl.answer.format(y=a))
        if full[: len(head)] == head and len(full) > len(head):
            out.append(full[len(head)])
        else:
            alone = _ids(model, tpl.answer.format(y=a))
            if not alone:
                raise InputError(f"The answer {a!r} encodes to no tokens.")
            out.append(alone[0])
    return torch.tensor(out, dtype=torch.long)


def drop_ambiguous(model: Model, task: Task, template: str | Template = "arrow") -> Task:
    """Drop pairs whose answer's first token is also the first token of the copied input
    (' box' for 'box' -> 'boxes'): first-token scoring cannot tell the task from copying."""
    tpl = get_template(template)
    ans = answer_ids(model, task.inputs, task.outputs, tpl)
    copy = answer_ids(model, task.inputs, task.inputs, tpl)
    keep = [i for i in range(len(task)) if int(ans[i]) != int(copy[i])]
    if len(keep) < len(task):
        log.info("%s: dropped %d of %d pairs whose first answer token equals the copied input's",
                 task.name, len(task) - len(keep), len(task))
    return task.subset(keep)
