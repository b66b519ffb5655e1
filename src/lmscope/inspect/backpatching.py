"""Back-patching (Biran et al. 2024, "Hopping Too Late") for two-hop questions.

A two-hop query ("The capital of the country where the Eiffel Tower is located is") may fail
although the model answers both single hops. The paper's hypothesis: the bridge entity is
resolved too late for the second hop to be computed in the remaining layers. Back-patching
takes the last-token hidden state of the same prompt at a later layer l_s
(`layers.l_s.resid_post`) and writes it into an earlier layer l_t < l_s
(`layers.l_t.resid_post`, same position), giving the later layers a second pass over it.

Correctness of a next-token readout: the first token of the answer or of an alias is the top-1
token (`criterion="top1"`, default) or among the top k (`criterion="topk"`). The paper scores
a 10-token greedy generation by alias substring; we score the next token (one forward per
pair), which is stricter for answers that a model would start with "the".

Controls, patched at the same place: a seeded random vector with the norm of the real source
state ("random"), and the l_s state of another prompt's last token ("other": a prompt with
another second-hop relation and another answer, see `other_rows`; a same-template prompt's
late state carries the answer *format*, e.g. "a currency name comes next", and fixes cases
by itself).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Patch
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table
from lmscope.inspect.patchscopes import last_token_logits, read_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BackpatchConfig:
    """How cases are selected and scored.

    Attributes:
        criterion: "top1": the answer's first token is the top-1 next token; "topk": among the
            top `k`.
        k: k of "topk".
        require_hops: Keep only two-hop failures whose two single hops are answered (the
            paper's subset). False = relaxed: every two-hop failure.
        controls: Any of "random" (random vector, same norm) and "other" (another prompt's state).
        seed: Seed of the random control.
        batch_size: Rows per forward.
        max_cases: Keep at most this many failing cases (None = all).
        gen_tokens: When > 0, a query (hop or two-hop) also counts as answered when the answer
            or an alias appears in its greedy continuation of this many tokens (the paper's
            check; it accepts "the Japanese yen" where the next token is " Japanese"). Only case
            selection uses it: a fix is always judged by the next-token `criterion`.
    """

    criterion: Literal["top1", "topk"] = "top1"
    k: int = 5
    require_hops: bool = True
    controls: tuple[str, ...] = ("random", "other")
    seed: int = 0
    batch_size: int = 64
    max_cases: int | None = None
    gen_tokens: int = 0

    def __post_init__(self) -> None:
        if self.criterion not in ("top1", "topk"):
            raise InputError(f"criterion must be 'top1' or 'topk', got {self.criterion!r}.")
        if self.k < 1:
            raise InputError(f"k must be at least 1, got {self.k}.")
        if self.gen_tokens < 0:
            raise InputError(f"gen_tokens must be 0 (off) or positive, got {self.gen_tokens}.")
        bad = [c for c in self.controls if c not in ("random", "other")]
        if bad:
            raise InputError(f"Unknown control {bad[0]!r}; use 'random' and/or 'other'.")


def _first_ids(model: Model, answers: Sequence[str]) -> list[int]:
    out = []
    for a in answers:
        ids = model.tokenizer(a, add_special_tokens=False)["input_ids"]
        if ids:
            out.append(ids[0])
    return sorted(set(out))


def _correct(logits: Tensor, ids: Sequence[Sequence[int]], cfg: BackpatchConfig) -> Tensor:
    """[n] bool: one of row i's answer ids is top-1 / in the top k of logits [n, vocab]."""
    k = 1 if cfg.criterion == "top1" else cfg.k
    top = logits.topk(k, dim=-1).indices.cpu()  # [n, k]
    return torch.tensor([bool(set(t.tolist()) & set(a)) for t, a in zip(top, ids, strict=True)])


def _run_last(model: Model, prompts: Sequence[str], bs: int, capture: bool = False, edits_fn=None):
    """Last-position logits [n, vocab] (and last-token resid_post of every layer [n, L, d])."""
    logits, states = [], []
    for i in range(0, len(prompts), bs):
        caps = ["layers.*.resid_post"] if capture else []
        edits = edits_fn(i, min(i + bs, len(prompts))) if edits_fn else []
        r = model.run(list(prompts[i:i + bs]), capture=caps, positions="last", logits="last", edits=edits)
        logits.append(r.logits.float())
        if capture:
            states.append(torch.stack([r.cache[f"layers.{x}.resid_post"].float() for x in range(model.n_layers)], 1))
    return torch.cat(logits), (torch.cat(states) if capture else None)


def backpatch_logits(model: Model, prompts: Sequence[str], *, source_layer: int, target_layer: int,
                     batch_size: int = 64) -> Tensor:
    """Next-token logits [n, vocab] after writing each prompt's own last-token resid_post of
    `source_layer` into `layers.target_layer.resid_post` at the last token."""
    sl = model.site(f"layers.{source_layer}.resid_post").layer
    tl = model.site(f"layers.{target_layer}.resid_post").layer
    _, states = _run_last(model, prompts, batch_size, capture=True)

    def edits(i, j):
        return [Patch(site=f"layers.{tl}.resid_post", source=states[i:j, sl, None, :], positions=[-1])]

    return _run_last(model, prompts, batch_size, edits_fn=edits)[0]


@dataclass(frozen=True, kw_only=True)
class BackpatchResult(Result):
    """Back-patching over the (l_s, l_t) grid on the selected failures.

    Attributes:
        counts: Dataset counts (total, two-hop correct, each hop correct, both hops, selected cases).
        grid: [l_s, l_t] share of cases fixed by that pair (NaN where l_s <= l_t).
        control_grids: Same for each control.
        oracle: Share of cases fixed by at least one pair (the paper's number); `grid_mean`
            is the share of all (case, pair) cells fixed.
        control_oracles: Same for each control.
        best_pair: (l_s, l_t, share) of the best single pair; `best_pair_keeps` the share of
            two-hop-correct prompts still correct under that pair.
        cases: Per case: prompt, answer, unpatched top token, number of fixing pairs.
    """

    model: str
    criterion: str
    k: int
    require_hops: bool
    gen_tokens: int
    counts: dict
    grid: Tensor
    control_grids: dict
    oracle: float
    control_oracles: dict
    best_pair: tuple[int, int, float] | None
    best_pair_keeps: float | None
    cases: list[dict]

    @property
    def grid_mean(self) -> float:
        """Share of all (case, l_s > l_t) cells that are fixed: the grid's mean."""
        return float(self.grid.nanmean()) if self.counts["cases"] else 0.0

    @property
    def control_grid_means(self) -> dict:
        """`grid_mean` of each control."""
        return {k: float(v.nanmean()) if self.counts["cases"] else 0.0 for k, v in self.control_grids.items()}

    def to_dict(self) -> dict:
        nan = lambda g: [[None if v != v else round(v, 4) for v in row] for row in g.tolist()]  # noqa: E731
        return {"model": self.model, "criterion": self.criterion, "k": self.k, "require_hops": self.require_hops,
                "gen_tokens": self.gen_tokens,
                "counts": self.counts, "oracle": self.oracle, "control_oracles": self.control_oracles,
                "grid_mean": self.grid_mean, "control_grid_means": self.control_grid_means,
                "best_pair": self.best_pair, "best_pair_keeps": self.best_pair_keeps,
                "grid": nan(self.grid), "control_grids": {k: nan(v) for k, v in self.control_grids.items()},
                "cases": self.cases}

    def table(self) -> Table:
        """The oracle and the share of (case, pair) cells fixed, back-patching next to each control."""
        n = self.counts
        notes = [(f"{n['total']} two-hop queries, {n['two_hop_correct']} correct; hop 1 {n['hop1_correct']}, hop 2 "
                  f"{n['hop2_correct']}, both {n['both_hops_correct']}; wrong with both hops right "
                  f"{n['wrong_with_both_hops']}; back-patched cases: {n['cases']}")]
        if self.best_pair:
            ls_, lt_, share = self.best_pair
            keeps = f"; keeps {self.best_pair_keeps:.2f} of correct queries correct" \
                if self.best_pair_keeps is not None else ""
            notes.append(f"best single pair l_s={ls_} -> l_t={lt_}: fixes {share:.2f}{keeps}")
        ctrl = list(self.control_grids)
        return Table(["measure", "back-patch", *(f"control: {k}" for k in ctrl)],
                     [["fixed by some l_s > l_t (oracle)", self.oracle, *(self.control_oracles[k] for k in ctrl)],
                      ["share of (case, pair) cells fixed", self.grid_mean,
                       *(self.control_grid_means[k] for k in ctrl)]],
                     title=f"{self.model}: back-patching, criterion {self.criterion}"
                           + (f" (k={self.k})" if self.criterion == "topk" else ""),
                     formats={c: ".4f" for c in ("back-patch", *(f"control: {k}" for k in ctrl))}, notes=notes)


def evaluate_two_hop(model: Model, rows: Sequence[dict], cfg: BackpatchConfig) -> dict:
    """Which single hops and two-hop queries the model answers; last-token states of every layer."""
    bs = cfg.batch_size
    ans = [_first_ids(model, [r["answer"], *r.get("aliases", [])]) for r in rows]
    hop1 = [_first_ids(model, [r["hop1_answer"]]) for r in rows]
    two_logits, states = _run_last(model, [r["prompt"] for r in rows], bs, capture=True)
    h1 = _correct(_run_last(model, [r["hop1_prompt"] for r in rows], bs)[0], hop1, cfg)
    h2 = _correct(_run_last(model, [r["hop2_prompt"] for r in rows], bs)[0], ans, cfg)
    two = _correct(two_logits, ans, cfg)
    top = [model.tokenizer.decode([int(i)]) for i in two_logits.argmax(-1)]
    texts = None
    if cfg.gen_tokens:
        gold = [[r["answer"], *r.get("aliases", [])] for r in rows]
        h1 = h1 | _in_generation(model, [r["hop1_prompt"] for r in rows], [[r["hop1_answer"]] for r in rows], cfg)
        h2 = h2 | _in_generation(model, [r["hop2_prompt"] for r in rows], gold, cfg)
        gen_two, texts = _in_generation(model, [r["prompt"] for r in rows], gold, cfg, return_texts=True)
        two = two | gen_two
    return {"answer_ids": ans, "hop1": h1, "hop2": h2, "two_hop": two, "states": states, "top": top,
            "texts": texts}


def _in_generation(model: Model, prompts: Sequence[str], gold: Sequence[Sequence[str]], cfg: BackpatchConfig,
                   return_texts: bool = False):
    """[n] bool: an answer string (stripped, lowercased) occurs in the greedy continuation."""
    texts = []
    for i in range(0, len(prompts), cfg.batch_size):
        texts += model.generate(list(prompts[i:i + cfg.batch_size]), max_new_tokens=cfg.gen_tokens).texts
    ok = torch.tensor([any(a.strip().lower() in t.lower() for a in g if a.strip()) for t, g in zip(texts, gold, strict=True)])
    return (ok, texts) if return_texts else ok


def _template(row: dict) -> str:
    """The second-hop relation of a row: its hop-2 prompt with the bridge entity blanked."""
    return row["hop2_prompt"].replace(row["hop1_answer"].strip(), "{}")


def other_rows(rows: Sequence[dict], answer_ids: Sequence[Sequence[int]]) -> list[int]:
    """For each row, the nearest earlier row (cyclically) with another relation template and no
    shared answer token, so that the "other" control cannot carry this row's answer or its
    answer format; falls back to another answer only, then to the previous row."""
    n = len(rows)
    out = []
    for i in range(n):
        cands = [(i - d) % n for d in range(1, n)]
        pick = next((j for j in cands if _template(rows[j]) != _template(rows[i])
                     and not set(answer_ids[j]) & set(answer_ids[i])), None)
        if pick is None:
            pick = next((j for j in cands if not set(answer_ids[j]) & set(answer_ids[i])), (i - 1) % n)
        out.append(pick)
    return out


def backpatch(model: Model, rows: Sequence[dict] | None = None, config: BackpatchConfig | None = None, *,
              progress: bool = False) -> BackpatchResult:
    """Select the two-hop failures and back-patch every pair l_s > l_t (plus controls).

    Per case, one run of only the last token (KV cache of the rest, `last_token_logits`) for
    all rows (source kind, l_s, l_t) at once.
    """
    from tqdm.auto import tqdm

    cfg = config or BackpatchConfig()
    rows = list(rows if rows is not None else read_jsonl("two_hop.jsonl"))
    if not rows:
        raise InputError("No two-hop rows given.")
    ev = evaluate_two_hop(model, rows, cfg)
    both = ev["hop1"] & ev["hop2"]
    wrong = ~ev["two_hop"]
    sel = (wrong & both) if cfg.require_hops else wrong
    cases = sel.nonzero().flatten().tolist()
    if cfg.max_cases is not None:
        cases = cases[: cfg.max_cases]
    counts = {"total": len(rows), "two_hop_correct": int(ev["two_hop"].sum()), "hop1_correct": int(ev["hop1"].sum()),
              "hop2_correct": int(ev["hop2"].sum()), "both_hops_correct": int(both.sum()),
              "wrong_with_both_hops": int((wrong & both).sum()), "wrong": int(wrong.sum()), "cases": len(cases)}
    L = model.n_layers
    states = ev["states"]  # [n, L, d]
    sources = {"backpatch": states}
    if "random" in cfg.controls:
        g = torch.Generator().manual_seed(cfg.seed)
        r = torch.randn(states.shape, generator=g)
        sources["random"] = r / r.norm(dim=-1, keepdim=True) * states.norm(dim=-1, keepdim=True)
    if "other" in cfg.controls:
        sources["other"] = states[other_rows(rows, ev["answer_ids"])]
    fixed = {k: torch.zeros(len(cases), L, L, dtype=torch.bool) for k in sources}  # [case, l_s, l_t]
    grid_pairs = [(ls, lt) for lt in range(L) for ls in range(L) if ls > lt]
    lt_of = torch.tensor([lt for _, lt in grid_pairs] * len(sources))
    for c, i in enumerate(tqdm(cases, disable=not progress, desc="cases")):
        # every (source kind, l_s, l_t) row of this prompt in one last-token run
        vals = torch.cat([torch.stack([src[i, ls] for ls, _ in grid_pairs]) for src in sources.values()])
        logits = last_token_logits(model, rows[i]["prompt"], vals, lt_of, cfg.batch_size)
        ok = _correct(logits, [ev["answer_ids"][i]] * len(vals), cfg).view(len(sources), len(grid_pairs))
        for kind_i, name in enumerate(sources):
            for (ls, lt), v in zip(grid_pairs, ok[kind_i].tolist(), strict=True):
                fixed[name][c, ls, lt] = v
    upper = torch.ones(L, L, dtype=torch.bool).tril(-1)  # l_s > l_t
    n = max(len(cases), 1)

    def grid(f):
        gr = f.float().sum(0) / n
        return torch.where(upper, gr, torch.full_like(gr, float("nan")))

    grids = {k: grid(v) for k, v in fixed.items()}
    oracles = {k: float(v.flatten(1).any(1).float().mean()) if cases else 0.0 for k, v in fixed.items()}
    best = keeps = None
    if cases:
        g = torch.nan_to_num(grids["backpatch"], nan=-1.0)
        flat = int(g.argmax())
        best = (flat // L, flat % L, float(g.flatten()[flat]))
        ok_rows = [rows[i]["prompt"] for i in ev["two_hop"].nonzero().flatten().tolist()]
        if ok_rows and best[2] > 0:
            kl = backpatch_logits(model, ok_rows, source_layer=best[0], target_layer=best[1], batch_size=cfg.batch_size)
            ok_ids = [ev["answer_ids"][i] for i in ev["two_hop"].nonzero().flatten().tolist()]
            keeps = float(_correct(kl, ok_ids, cfg).float().mean())
    per_case = [{"prompt": rows[i]["prompt"], "answer": rows[i]["answer"], "top": ev["top"][i],
                 **({"generation": ev["texts"][i]} if ev["texts"] is not None else {}),
                 "fixing_pairs": int(fixed["backpatch"][c].sum()),
                 **{f"fixing_pairs_{k}": int(fixed[k][c].sum()) for k in sources if k != "backpatch"}}
                for c, i in enumerate(cases)]
    return BackpatchResult(
        model=model.name, criterion=cfg.criterion, k=cfg.k, require_hops=cfg.require_hops,
        gen_tokens=cfg.gen_tokens, counts=counts,
        grid=grids["backpatch"], control_grids={k: v for k, v in grids.items() if k != "backpatch"},
        oracle=oracles["backpatch"], control_oracles={k: v for k, v in oracles.items() if k != "backpatch"},
        best_pair=best, best_pair_keeps=keeps, cases=per_case,
    )
