"""The Neurons tab's glue: a layer's MLP neurons recorded over a corpus and kept in the session,
one neuron's page (statistics, histogram, max-activating examples), and its causal tests.

    POST /api/neurons/record      `record` a layer over the shipped corpus or pasted text (a job), or read
                                  a recording file; kept in the session, so another neuron of the layer is instant
    POST /api/neurons/page        one neuron: `neuron_stats`, its histogram, `examples` (records first if needed)
    POST /api/neurons/ablate      `ablate` (zero / mean / resample) on typed prompts, next to the same
                                  ablation of random neurons of the layer (`ablation_curve`, k = 1)
    POST /api/neurons/dose        `dose_response` over values spanning the neuron's recorded range
    GET  /api/neurons/recordings  the recordings held in this session, and recording files in the folders

A recording is keyed by model, layer, corpus (the shipped one, or a hash of the pasted text), token
budget and top-k; the last `KEEP` are held. Mean and resample ablation need activations of every
neuron on reference text (`reference_activations`): the recording's corpus (the shipped corpus for
a recording file, which holds statistics only), `REFERENCE_TOKENS` of it, the last one held.

A recording file (`lmscope neuron record --out`) is read only inside the studio's vector folders
(the working directory and `--vectors-dir`: the folders the user let the studio read artifacts
from), with their rule: a path that is missing, unreadable or outside gets one and the same
message, and messages about files inside name no server folder.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from lmscope.engine.errors import ArtifactError, InputError

from .bodies import MAX_PROMPT_CHARS, MAX_TARGET_CHARS, _Body
from .guard import Folders, short
from .studio import json_safe

# A first recording with the defaults (4,096 tokens of the shipped corpus, a whole layer) takes
# ~6 s on gemma-3-270m at layer 9 on 2 CPU cores; MAX_TOKENS about a minute there.
DEFAULT_TOKENS, MAX_TOKENS = 4096, 32_768
MAX_CORPUS_CHARS = 60_000  # pasted text (the body limit is 256 kB of JSON)
MAX_TOP_K = 50  # examples kept per neuron
KEEP = 6  # recordings held (a whole gemma layer: ~12 MiB)
REFERENCE_TOKENS = 512  # reference activations for mean/resample: [tokens, n_layers, d_mlp] float32
MAX_PROMPTS, MAX_NEUTRAL, MAX_RANDOM, MAX_VALUES = 16, 16, 8, 33
MAX_RECORDING_BYTES = 512 * 2**20
MAX_HELD_FILE_BYTES = 2**30  # recording files held at once (the newest is always kept)

Layer = Annotated[int, Field(ge=-4096, le=4095)]
Unit = Annotated[int, Field(ge=-(2**24), le=2**24)]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
Token = Annotated[str, Field(min_length=1, max_length=MAX_TARGET_CHARS)]
Value = Annotated[float, Field(ge=-1e4, le=1e4, allow_inf_nan=False)]


class RecordRequest(_Body):
    """What to record: a layer, over the shipped corpus, pasted text (documents separated by a
    blank line) or a recording file in the studio's folders."""

    layer: Layer
    corpus: Literal["shipped", "text", "file"] = "shipped"
    text: str | None = Field(None, min_length=1, max_length=MAX_CORPUS_CHARS)
    file: str | None = Field(None, min_length=1, max_length=1000)
    max_tokens: int = Field(DEFAULT_TOKENS, ge=16, le=MAX_TOKENS)
    top_k: int = Field(20, ge=1, le=MAX_TOP_K)

    @model_validator(mode="after")
    def _one_source(self):
        if self.corpus == "text" and (self.text is None or not self.text.strip()):
            raise ValueError("corpus 'text' needs text: the documents to record over, separated by blank lines")
        if self.corpus == "file" and self.file is None:
            raise ValueError("corpus 'file' needs file: a recording written by `lmscope neuron record --out`")
        if self.corpus != "text" and self.text is not None:
            raise ValueError(f"text is read only with corpus 'text' (this request has corpus {self.corpus!r})")
        if self.corpus != "file" and self.file is not None:
            raise ValueError(f"file is read only with corpus 'file' (this request has corpus {self.corpus!r})")
        return self


class PageRequest(RecordRequest):
    neuron: Unit
    k: int = Field(10, ge=1, le=MAX_TOP_K)
    bins: int = Field(60, ge=8, le=200)


class _CausalRequest(RecordRequest):
    neuron: Unit
    prompts: list[Prompt] = Field(min_length=1, max_length=MAX_PROMPTS)
    target: Token
    baseline: Token | None = None


class AblateRequest(_CausalRequest):
    method: Literal["zero", "mean", "resample"] = "zero"
    n_random: int = Field(3, ge=0, le=MAX_RANDOM)
    n_neutral: int = Field(8, ge=0, le=MAX_NEUTRAL)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class DoseRequest(_CausalRequest):
    values: list[Value] | None = Field(None, min_length=1, max_length=MAX_VALUES)
    n_values: int = Field(11, ge=3, le=MAX_VALUES)
    positions: Literal["all", "last"] = "all"


class RecordingFolders(Folders):
    """The folders a recording `file` may point into (the studio's vector folders)."""

    what = "recording"

    def accepts(self, p: Path) -> bool:
        return p.is_file() and Path(f"{p}.json").is_file()

    def refusal(self, name: str) -> str:
        return (f"No recording file {short(name, 120)} in the studio's folders ({self}): give the path of a "
                f".safetensors file written by `lmscope neuron record --out` (with its .json sidecar) inside one of "
                f"them; relative paths start at {self.folders[0]}. `lmscope studio --vectors-dir DIR` adds a folder.")

    def find(self, model_name: str) -> list[str]:
        """Recording files for `model_name` below the folders, as paths a request can give."""
        return [e["path"] for e in self.artifacts(
            lambda _, meta: {} if meta.get("kind") == "neuron_recording" and meta.get("model") == model_name else None)]


def documents(text: str) -> list[str]:
    """Pasted text -> documents (separated by a blank line; windows never cross one)."""
    docs = [d.strip() for d in re.split(r"\n[ \t\r]*\n", text) if d.strip()]
    if not docs:
        raise InputError("The pasted corpus is empty; paste some text (documents separated by a blank line).")
    return docs


def value_range(stats: dict, n: int) -> list[float]:
    """`n` values from min(recorded min, 0) to twice the recorded max: the natural range and
    beyond it, where a clamp in Generate usually goes."""
    lo, hi = min(stats["min"], 0.0), 2 * max(stats["max"], 0.0)
    if hi - lo < 1e-6:
        hi = lo + 1.0
    return [float(f"{lo + (hi - lo) * i / (n - 1):.4g}") for i in range(n)]


class Recordings:
    """The session's recordings (the last `KEEP`) and its last reference activations. The model
    thread records and reads; `list` may run on another thread."""

    def __init__(self, model, folders: RecordingFolders) -> None:
        self.model, self.folders = model, folders
        self._held: OrderedDict = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._ref: tuple | None = None

    def get(self, req: RecordRequest, layer: int) -> tuple[dict, object]:
        """(what the session calls it, the `NeuronRecording`) for a request's source at `layer`."""
        key, info, make = self._source(req, layer)
        with self._lock:
            if key in self._held:
                self._held.move_to_end(key)
                return self._held[key]
        rec = make()  # outside the lock: seconds to minutes
        entry = ({"id": f"rec-{next(self._ids)}", **info}, rec)
        with self._lock:
            self._held[key] = entry
            # a layer recorded here is ~12 MiB; a file may hold every layer: their bytes are bounded too
            while len(self._held) > KEEP or (len(self._held) > 1 and sum(
                    k[3] for k in self._held if k[0] == "file") > MAX_HELD_FILE_BYTES):
                self._held.popitem(last=False)
        return entry

    def _source(self, req: RecordRequest, layer: int):
        """(key, description, how to make it) of a request's recording."""
        from lmscope.neurons.recording import RecordConfig, record

        if req.corpus == "file":
            path = self.folders.resolve(req.file)
            try:
                st = path.stat()
            except OSError as e:
                raise ArtifactError(f"{path.name} cannot be read ({e.strerror}).") from None
            if st.st_size > MAX_RECORDING_BYTES:
                raise ArtifactError(f"{path.name} is over {MAX_RECORDING_BYTES // 2**20} MiB: not a neuron recording.")
            return ("file", str(path), st.st_mtime_ns, st.st_size), {"source": "file", "file": req.file}, \
                lambda: self._load(path)
        texts = None if req.corpus == "shipped" else documents(req.text)
        cfg = RecordConfig(max_tokens=req.max_tokens, top_k=req.top_k)
        return ((req.corpus, _digest(req.text), layer, req.max_tokens, req.top_k), {"source": req.corpus},
                lambda: record(self.model, f"layers.{layer}.mlp.neurons", texts, config=cfg))

    def _load(self, path: Path):
        from lmscope.neurons.recording import NeuronRecording

        try:
            return NeuronRecording.load(path, model=self.model)
        except OSError as e:
            raise ArtifactError(f"{path.name} cannot be read ({e.strerror}).") from None
        except (ArtifactError, InputError, KeyError, ValueError) as e:
            if isinstance(e, KeyError | ValueError):  # a sidecar of the right kind with missing or odd fields
                e = ArtifactError(f"{path.name} is not a readable neuron recording ({type(e).__name__}: {short(str(e))}).")
            raise self.folders.quiet(e) from None

    def list(self) -> list[dict]:
        with self._lock:
            held = list(self._held.values())
        return [{**info, "corpus": rec.corpus, "sites": list(rec.sites), "n_tokens": rec.n_tokens,
                 "seconds": round(rec.seconds, 3)} for info, rec in reversed(held)]

    def reference(self, req: RecordRequest):
        """Reference activations for mean / resample ablation over the request's corpus, and what they are."""
        from lmscope.neurons.causal import reference_activations

        text = req.text if req.corpus == "text" else None
        key = (_digest(text), REFERENCE_TOKENS)
        if self._ref is None or self._ref[0] != key:
            self._ref = None  # free the old one first: [tokens, n_layers, d_mlp]
            ref = reference_activations(self.model, documents(text) if text else None, max_tokens=REFERENCE_TOKENS)
            self._ref = (key, ref)
        ref = self._ref[1]
        return ref, f"{len(ref.acts)} tokens of {'the pasted text' if text else 'the shipped corpus'}"


def _digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def add_routes(studio) -> None:
    """The Neurons tab's endpoints (see the module docstring)."""
    from lmscope.neurons import causal as nc

    model = studio.model
    folders = RecordingFolders(studio.vector_folders.folders if studio.vector_folders else [Path.cwd()])
    recs = Recordings(model, folders)
    studio.info["neuron_limits"] = {
        "default_tokens": DEFAULT_TOKENS, "max_tokens": MAX_TOKENS, "max_corpus_chars": MAX_CORPUS_CHARS,
        "max_top_k": MAX_TOP_K, "keep": KEEP, "reference_tokens": REFERENCE_TOKENS, "max_prompts": MAX_PROMPTS,
        "max_neutral": MAX_NEUTRAL, "max_random": MAX_RANDOM, "max_values": MAX_VALUES}

    def neuron(req) -> tuple[int, int]:
        s = model.site(f"layers.{req.layer}.mlp.neurons[{req.neuron}]")  # validates; negatives -> indices
        return s.layer, s.units[0]

    def held(req, layer: int):
        info, rec = recs.get(req, layer)
        return {**info, **rec.summary()}, rec

    def record_job(req: RecordRequest) -> dict:
        layer = model.site(f"layers.{req.layer}.mlp.neurons").layer
        view, _ = held(req, layer)
        return json_safe({"model": model.name, "layer": layer, "recording": view})

    def page_job(req: PageRequest) -> dict:
        layer, n = neuron(req)
        view, rec = held(req, layer)
        site, j = rec.find(layer, n)  # a file without this neuron: a SiteError naming what it holds
        return json_safe({
            "model": model.name, "layer": layer, "neuron": n, "site": f"layers.{layer}.mlp.neurons[{n}]",
            "recording": view, "stats": rec.neuron_stats(layer, n), "histogram": site.stats.histogram(j, n=req.bins),
            "examples": [e.to_dict() for e in rec.examples(layer, n, model.tokenizer, k=req.k)]})

    def tokens(req) -> dict:
        dec = model.tokenizer.decode
        return {"target": req.target, "target_token": dec([model.token_id(req.target)]), "baseline": req.baseline,
                "baseline_token": None if req.baseline is None else dec([model.token_id(req.baseline)])}

    def ablate_job(req: AblateRequest) -> dict:
        from lmscope.datasets import shipped
        from lmscope.datasets.corpus import read_prompts

        layer, n = neuron(req)
        studio.check_prompts(req.prompts)
        words = tokens(req)
        ref, about = (None, None) if req.method == "zero" else recs.reference(req)
        neutral = read_prompts(shipped.path("neutral_prompts.jsonl"))[:req.n_neutral] or None
        kw = {"target": req.target, "baseline": req.baseline, "method": req.method, "reference": ref,
              "neutral": neutral, "seed": req.seed}
        eff = nc.ablate(model, [(layer, n)], req.prompts, **kw)
        control = None
        if req.n_random:  # k = 1 random neurons of the same layer, each ablated the same way
            curve = nc.ablation_curve(model, [(layer, n)], req.prompts, ks=[1], n_random=req.n_random,
                                      pool_layers=[layer], **kw)
            control = curve.to_dict()["random"][0]
        return json_safe({"model": model.name, "layer": layer, "neuron": n, "site": f"layers.{layer}.mlp.neurons[{n}]",
                          "prompts": req.prompts, **words, "method": req.method, "reference": about,
                          "n_neutral": len(neutral or []), "n_random": req.n_random, "seed": req.seed,
                          "effect": eff.to_dict(per_prompt=True), "control": control})

    def dose_job(req: DoseRequest) -> dict:
        layer, n = neuron(req)
        studio.check_prompts(req.prompts)
        tokens(req)  # a target that encodes to nothing: 400 before the recording
        view, rec = held(req, layer)
        stats = rec.neuron_stats(layer, n)
        values = req.values or value_range(stats, req.n_values)
        res = nc.dose_response(model, [(layer, n)], req.prompts, target=req.target, baseline=req.baseline,
                               values=values, positions=req.positions)
        q = stats["quantiles"]
        return json_safe({"model": model.name, "layer": layer, "neuron": n, "site": f"layers.{layer}.mlp.neurons[{n}]",
                          "prompts": req.prompts, "recording": view,
                          "recorded": {"min": stats["min"], "q01": q["0.01"], "q50": q["0.5"], "q99": q["0.99"],
                                       "max": stats["max"], "mean": stats["mean"]},
                          **res.to_dict()})

    studio.post("neurons/record", RecordRequest, record_job)
    studio.post("neurons/page", PageRequest, page_job)
    studio.post("neurons/ablate", AblateRequest, ablate_job)
    studio.post("neurons/dose", DoseRequest, dose_job)
    studio.get("neurons/recordings", lambda: {"recordings": recs.list(), "files": folders.find(model.name),
                                              "dirs": [str(f) for f in folders.folders]})
