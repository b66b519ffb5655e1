"""Activation patching: how much of a task's clean-vs-corrupt metric gap one component carries.

Two directions, named as such everywhere:

    noising     run the CLEAN prompts with one component's activation replaced by its reference
                value (`ablation`: the paired corrupt prompt's, the corrupt mean, or zero); the
                metric falls by what the component was needed for
    denoising   run the CORRUPT prompts with one component's activation restored to its clean
                value; the metric recovers by what the component suffices for

Components (`component=`):

    resid     layers.L.resid_pre, one (layer, padded column) at a time    grid layer x position
    heads     layers.L.attn.z[h], every position at once                 grid layer x head
    mlp       layers.L.mlp_out, all positions (or each column)           grid layer x 1 (x position)
    neurons   layers.L.mlp.neurons[i] for given (layer, index) pairs     grid 1 x neuron

All activations come from one clean and one corrupt forward. Each patched forward scores the
task metric (`TaskRun`); several patched copies of the batch run stacked along the batch axis
(rows component-major) with an `Apply` edit that writes each chunk of rows its own component,
which equals one forward per component with a `Patch` edit (`batch_size=1`) up to float rounding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmscope.circuits.ablation import check_ablation, reference
from lmscope.circuits.metric import TaskRun
from lmscope.engine import runner
from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Apply, Edit, Patch
from lmscope.engine.model import Batch
from lmscope.engine.results import Result, Table

COMPONENTS = ("resid", "heads", "mlp", "neurons")
DIRECTIONS = ("noising", "denoising")
#: Rows (patched copies x prompts) of one stacked forward when `batch_size` is None.
ROWS_PER_FORWARD = 64


# ---- patched forwards ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Write:
    """Write `src[:, col, unit]` (all columns when `col` is None, all units when `unit` is None)
    into the activation at `site` ("layers.3.attn.z"); `src` is `[batch, pos, *feat]`."""

    site: str
    src: Tensor = field(repr=False)
    unit: int | None = None
    col: int | None = None


def _patch_edit(w: Write, width: int) -> Edit:
    """The one-job edit: a `Patch` of the unit's slice at the column (or every column)."""
    site = w.site if w.unit is None else f"{w.site}[{w.unit}]"
    src = w.src if w.unit is None else w.src[:, :, w.unit:w.unit + 1]
    if w.col is None:
        return Patch(site=site, source=src)
    start = w.col - width  # the padded column as a position counted from the end of every row
    return Patch(site=site, source=src, positions=slice(start, start + 1 if start + 1 < 0 else None))


def _writer(writes: list[tuple[int, Write]], b: int):
    """fn(x [k*b, pos, *feat]) writing each job's values into its chunk j of rows."""
    def fn(x: Tensor) -> Tensor:
        out = x.clone()
        for j, w in writes:
            rows = slice(j * b, (j + 1) * b)
            cols = slice(None) if w.col is None else slice(w.col, w.col + 1)
            if w.unit is None:
                out[rows, cols] = w.src[:, cols]
            else:
                out[rows, cols, w.unit] = w.src[:, cols, w.unit]
        return out
    return fn


def forward_jobs(run: TaskRun, which: str, jobs: Sequence[Sequence[Write]], *, per_forward: int,
                 capture: Sequence[str] = (), score: bool = True) -> list[tuple[float | None, dict[str, Tensor]]]:
    """Run `which` ("clean"/"corrupt") once per job (a list of writes), `per_forward` jobs
    stacked per forward; return per job (mean metric or None, {captured site: [batch, ...]})."""
    b, out = run.n, []
    base = run.batch(which)
    width = base.input_ids.shape[1]
    caps = list(capture) + (["final_norm"] if score else [])
    for start in range(0, len(jobs), per_forward):
        group = jobs[start:start + per_forward]
        k = len(group)
        if k == 1:
            edits, batch = [_patch_edit(w, width) for w in group[0]], base
        else:
            by_site: dict[str, list[tuple[int, Write]]] = defaultdict(list)
            for j, job in enumerate(group):
                for w in job:
                    by_site[w.site].append((j, w))
            edits = [Apply(site=s, fn=_writer(ws, b), name=f"patch {s}") for s, ws in by_site.items()]
            batch = Batch(base.input_ids.repeat(k, 1), base.attention_mask.repeat(k, 1), list(base.prompts) * k)
        with torch.no_grad():  # the metric's readout too
            res = runner.run(run.model, batch, capture=caps, edits=edits, logits=None)
            for j in range(k):
                rows = slice(j * b, (j + 1) * b)
                metric = float(run.from_normed(res.cache["final_norm"][rows]).mean()) if score else None
                out.append((metric, {c: res.cache[c][rows] for c in capture}))
    return out


def per_forward_for(run: TaskRun, batch_size: int | None) -> int:
    """Jobs stacked per forward: `batch_size`, or as many as fill `ROWS_PER_FORWARD` rows."""
    if batch_size is None:
        return max(1, ROWS_PER_FORWARD // run.n)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer (components per forward), got {batch_size!r}.")
    return batch_size


def check_layers(run: TaskRun, layers) -> list[int]:
    """Layer numbers (negative from the end) range-checked and normalised; None = every layer."""
    n = run.model.n_layers
    if layers is None:
        return list(range(n))
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise InputError("layers is empty; pass layer numbers or None for every layer.")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise InputError(f"Layer {layer!r} is out of range for {run.model.name} ({n} layers: 0..{n - 1}, "
                             f"or -{n}..-1).")
    return sorted({layer % n for layer in layers})


# ---- the result ---------------------------------------------------------------------------------

def gap_fraction(values: Tensor, clean: float, corrupt: float, direction: str) -> Tensor:
    """Fraction of the clean-corrupt gap: noising (clean - v)/(clean - corrupt), denoising
    (v - corrupt)/(clean - corrupt); NaN everywhere when the gap is 0."""
    gap = clean - corrupt
    if gap == 0:
        return torch.full_like(values, float("nan"))
    return (clean - values) / gap if direction == "noising" else (values - corrupt) / gap


def top_names(names: list[list[str]], normalized: Tensor, k: int) -> list[tuple[str, int, int]]:
    """The k (name, row, col) with the largest |normalized| (NaN left out)."""
    flat = normalized.flatten().abs().nan_to_num(nan=-1.0)
    order = flat.argsort(descending=True, stable=True).tolist()
    cols = normalized.shape[1]
    return [(names[i // cols][i % cols], i // cols, i % cols) for i in order[:max(0, k)] if flat[i] >= 0]


@dataclass
class PatchingResult(Result):
    """Activation patching on one task: the metric of every patched run.

    Attributes:
        kind: "resid", "heads", "mlp" or "neurons".
        direction: "noising" (clean run, component set to its reference) or "denoising"
            (corrupt run, component restored to clean).
        ablation: The reference of noising ("resample", "mean", "zero"); denoising: "resample".
        metric, task, model: Names.
        clean, corrupt: The unpatched metrics (means over rows).
        values: Raw metric of each patched run `[rows, cols]` (mean over prompts).
        row_labels, col_labels, row_title, col_title: The grid's axes.
        names: Component name of every cell ("a3.h2", "m5", "m5@7", "r4@7", "r4", "n3.17").
        positions: "all" (every position at once) or "each" (one padded column at a time).
    """

    kind: str
    direction: str
    ablation: str
    metric: str
    task: str
    model: str
    clean: float
    corrupt: float
    values: Tensor
    row_labels: list[str]
    col_labels: list[str]
    row_title: str
    col_title: str
    names: list[list[str]]
    positions: str = "all"

    @property
    def baseline(self) -> float:
        """The unpatched metric of the run that is patched (clean for noising)."""
        return self.clean if self.direction == "noising" else self.corrupt

    @property
    def effect(self) -> Tensor:
        """values - baseline: the metric change each patch causes."""
        return self.values - self.baseline

    @property
    def normalized(self) -> Tensor:
        """Fraction of the clean-corrupt gap each component carries (1: all of it)."""
        return gap_fraction(self.values, self.clean, self.corrupt, self.direction)

    def top(self, k: int = 10) -> list[str]:
        """Names of the k components with the largest |normalized| effect."""
        return [n for n, _, _ in top_names(self.names, self.normalized, k)]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "direction": self.direction, "ablation": self.ablation, "metric": self.metric,
                "task": self.task, "model": self.model, "values": self.normalized.tolist(),
                "raw": self.values.tolist(), "row_labels": list(self.row_labels), "col_labels": list(self.col_labels),
                "row_title": self.row_title, "col_title": self.col_title, "clean": self.clean,
                "corrupt": self.corrupt}

    def table(self, k: int = 20) -> Table:
        norm, eff = self.normalized, self.effect
        rows = [[n, float(norm[i, j]), float(eff[i, j]), float(self.values[i, j])]
                for n, i, j in top_names(self.names, norm, k)]
        what = ("clean run, component set to its " + self.ablation + " value" if self.direction == "noising"
                else "corrupt run, component restored to clean")
        return Table(["component", "normalized", "effect", self.metric], rows,
                     title=f"{self.direction} patching of {self.kind} on {self.task} ({self.model})",
                     formats={"normalized": "+.3f", "effect": "+.4f", self.metric: ".4f"},
                     notes=[f"{self.direction}: {what}; normalized = fraction of the clean-corrupt gap.",
                            f"clean {self.metric} {self.clean:.4f}, corrupt {self.corrupt:.4f}."])


# ---- activation patching ------------------------------------------------------------------------

def _token_labels(run: TaskRun) -> list[str]:
    """Column labels: the tokens of clean row 0, '<pad>' where row 0 is padded."""
    row = run.task.clean[0]
    width = run.clean.input_ids.shape[1]
    return ["<pad>"] * (width - len(row)) + [run.model.tokenizer.decode([t]) for t in row]


def _grid(run: TaskRun, component: str, positions: str, layers: list[int], neurons):
    """The grid: cells [[(site, unit, col)]], names, row/col labels, row/col titles."""
    width = run.clean.input_ids.shape[1]
    cols = list(range(width)) if positions == "each" else [None]
    col_labels = _token_labels(run) if positions == "each" else None
    if component == "heads":
        cells = [[(f"layers.{L}.attn.z", h, None) for h in range(run.model.n_heads)] for L in layers]
        names = [[f"a{L}.h{h}" for h in range(run.model.n_heads)] for L in layers]
        return cells, names, [str(L) for L in layers], [str(h) for h in range(run.model.n_heads)], "layer", "head"
    if component in ("resid", "mlp"):
        kind, short = ("resid_pre", "r") if component == "resid" else ("mlp_out", "m")
        cells = [[(f"layers.{L}.{kind}", None, c) for c in cols] for L in layers]
        names = [[f"{short}{L}" + ("" if c is None else f"@{c}") for c in cols] for L in layers]
        col_title = "position" if positions == "each" else ""
        return cells, names, [str(L) for L in layers], col_labels or [kind], "layer", col_title
    pairs = _check_neurons(run, neurons)
    names = [[f"n{L}.{i}" for L, i in pairs]]
    return [[(f"layers.{L}.mlp.neurons", i, None) for L, i in pairs]], names, ["neurons"], names[0], "", "neuron"


def _check_neurons(run: TaskRun, neurons) -> list[tuple[int, int]]:
    m = run.model
    if not neurons:
        raise InputError("component='neurons' needs neurons=[(layer, index), ...], e.g. [(3, 17), (5, 2)].")
    out = []
    for pair in neurons:
        if not (isinstance(pair, Sequence) and len(pair) == 2 and all(isinstance(x, int) for x in pair)):
            raise InputError(f"A neuron must be a (layer, index) pair of integers, got {pair!r}.")
        layer = check_layers(run, [pair[0]])[0]
        if not -m.d_mlp <= pair[1] < m.d_mlp:
            raise InputError(f"Neuron {pair[1]} is out of range for {m.name} ({m.d_mlp} neurons: 0..{m.d_mlp - 1}).")
        out.append((layer, pair[1] % m.d_mlp))
    return out


def patch(run: TaskRun, *, component: str = "heads", direction: str = "noising", ablation: str = "resample",
          layers: Sequence[int] | int | None = None, positions: str | None = None,
          neurons: Sequence[tuple[int, int]] | None = None, batch_size: int | None = None) -> PatchingResult:
    """Activation patching of every component of one kind, one component per patched run.

    Args:
        run: The task bound to a model (`TaskRun.build(model, task)`).
        component: "resid", "heads", "mlp" or "neurons" (see the module docstring).
        direction: "noising" (clean run, component -> reference) or "denoising" (corrupt run,
            component -> clean value).
        ablation: Reference of noising: "resample" (paired corrupt prompt), "mean" (mean over
            the corrupt prompts per column) or "zero". Denoising restores clean values, so it
            takes only "resample".
        layers: Layers to patch (negative from the end); None = every layer.
        positions: "all" (every position at once) or "each" (one padded column at a time:
            resid and mlp only). None: "each" for resid, "all" otherwise.
        neurons: (layer, index) pairs for component "neurons".
        batch_size: Patched copies of the batch per forward; 1 = one forward per component
            (a `Patch` edit); None = as many as fill 64 rows.

    Returns:
        A `PatchingResult` (values, effect, normalized; `top(k)`, `table()`, `to_dict()`).
    """
    if component not in COMPONENTS:
        raise InputError(f"Unknown component {component!r}; expected one of {', '.join(COMPONENTS)}.")
    if direction not in DIRECTIONS:
        raise InputError(f"Unknown direction {direction!r}; expected 'noising' (clean run, component ablated) or "
                         "'denoising' (corrupt run, component restored to clean).")
    check_ablation(ablation)
    if direction == "denoising" and ablation != "resample":
        raise InputError(f"Denoising restores clean values into the corrupt run; ablation={ablation!r} applies only "
                         "to noising. Use direction='noising' or ablation='resample'.")
    positions = positions or ("each" if component == "resid" else "all")
    if positions not in ("all", "each"):
        raise InputError(f"positions must be 'all' (every position at once) or 'each' (one column at a time), "
                         f"got {positions!r}.")
    if positions == "each" and component in ("heads", "neurons"):
        raise InputError(f"positions='each' is supported for resid and mlp; {component} patch every position at "
                         "once (positions='all').")
    if component == "neurons" and layers is not None:
        raise InputError("component='neurons' takes its layers from neurons=[(layer, index), ...]; drop layers.")
    per = per_forward_for(run, batch_size)
    cells, names, row_labels, col_labels, row_title, col_title = _grid(
        run, component, positions, check_layers(run, layers), neurons)
    sites = sorted({s for row in cells for s, _, _ in row})
    with torch.no_grad():
        (clean, clean_acts), (corrupt, corrupt_acts) = forward_jobs(run, "clean", [[]], per_forward=1, capture=sites) \
            + forward_jobs(run, "corrupt", [[]], per_forward=1, capture=sites)
        if direction == "noising":
            which = "clean"
            mask = run.corrupt.attention_mask
            src = {s: reference(run, corrupt_acts[s], mask, ablation) for s in sites}
        else:
            which, src = "corrupt", clean_acts
        jobs = [[Write(s, src[s], unit, col)] for row in cells for s, unit, col in row]
        scores = [m for m, _ in forward_jobs(run, which, jobs, per_forward=per)]
    values = torch.tensor(scores, dtype=torch.float32).reshape(len(cells), len(cells[0]))
    return PatchingResult(kind=component, direction=direction, ablation=ablation, metric=run.task.metric,
                          task=run.task.name, model=run.model.name, clean=clean, corrupt=corrupt, values=values,
                          row_labels=row_labels, col_labels=col_labels, row_title=row_title, col_title=col_title,
                          names=names, positions=positions)
