"""The Relations tab's glue: the shipped relations, the LRE files the studio may read and write,
the LREs fitted in this session, and one library call per action.

    GET  /api/relations            shipped_relations(): names, types, sizes, templates
    GET  /api/relations/lres       LRE artifacts in the LRE folders, and the LREs fitted here
    POST /api/relations/fit        fit_lre on the first n_train facts the model knows (optionally saved)
    POST /api/relations/lens       attribute_lens(...).to_dict()
    POST /api/relations/predict    predict_objects(...).to_dict(), with the relation's own objects

A relation is a shipped *name* (`country_capital_city`), never a path: a request cannot make the
server read a facts file of its choosing (`lmscope relation` runs a user's JSONL). An LRE file
is read, and a fitted one written, only inside the studio's **LRE folders** (the working
directory, plus `lmscope studio --lre-dir DIR`) with the rule of the vector and SAE folders: a
path that is missing, unreadable or outside gets one and the same message, and messages about
files inside them name no server folder. A save never replaces a file unless `overwrite` is
set, and then only an LRE artifact.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

from lmscope.engine.errors import ArtifactError, InputError

from .guard import Folders, short, sidecar_kind
from .studio import Kept, json_safe

#: Training facts at most (the paper uses 5 to 8; each costs one Jacobian: ~7 s on gemma-3-270m).
MAX_TRAIN = 8
#: Facts examined at most to find the n_train the model knows (one few-shot forward each).
MAX_FACTS = 64
#: Fitted LREs kept in memory (by id), and LRE files kept loaded.
KEEP_FITTED, KEEP_LOADED = 8, 4


def shipped() -> dict:
    """The shipped relations, as the page's relation list."""
    from lmscope.datasets.relations import TYPES, shipped_relations

    return {"types": list(TYPES), "relations": shipped_relations()}


def check_relation(name: str) -> str:
    """`name` itself when it is a shipped relation; ValueError otherwise (a body validator)."""
    from lmscope.datasets.relations import shipped_relations

    known = [r["relation"] for r in shipped_relations()]
    if name in known:
        return name
    # The reason comes first: a validation message is cut at 200 characters.
    if any(c in name for c in "/\\") or name.endswith((".jsonl", ".json")) or name.startswith((".", "~")):
        raise ValueError(f"{name[:40]!r} is a file path; the studio takes shipped relation names, not files (fit "
                         "your own facts with `lmscope relation`). GET /api/relations lists the names.")
    close = [n for n in known if name.lower() in n][:4]
    raise ValueError(f"Unknown relation {name[:40]!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                          "; GET /api/relations lists the shipped ones."))


class LreFolders(Folders):
    """The folders an LRE `path` may be read from; relative paths start at the first."""

    what = "LRE"

    def accepts(self, p: Path) -> bool:
        return p.suffix == ".safetensors" and p.is_file() and Path(f"{p}.json").is_file()

    def refusal(self, name: str) -> str:
        return (f"No LRE file {short(name, 120)} in the studio's LRE folders ({self}): give the path of a "
                f".safetensors file written by lmscope (with its .json sidecar) inside one of them; relative paths "
                f"start at {self.folders[0]}. `lmscope studio --lre-dir DIR` adds a folder.")

    def find(self, model_name: str) -> list[dict]:
        """LRE artifacts below the folders (their sidecar's kind is "lre"), as paths a request can give."""
        return self.artifacts(lambda _, meta: _describe(meta, model_name))


class LreTargets(LreFolders):
    """Where a fitted LRE may be saved: a `.safetensors` name in an existing folder inside the LRE folders."""

    def accepts(self, p: Path) -> bool:
        return p.suffix == ".safetensors" and p.parent.is_dir()

    def refusal(self, name: str) -> str:
        return (f"Cannot save an LRE as {short(name, 120)}: give a name ending in .safetensors in an existing folder "
                f"inside the studio's LRE folders ({self}); relative paths start at {self.folders[0]}.")


def _describe(meta: dict, model_name: str) -> dict | None:
    """The listing entry of an LRE artifact's sidecar (None when it is not an LRE's)."""
    if meta.get("kind") != "lre":
        return None
    demos = meta.get("demos")
    return {"relation": str(meta.get("relation", "")), "layer": meta.get("layer"), "beta": meta.get("beta"),
            "model": meta.get("model"), "usable": meta.get("model") == model_name,
            "n_demos": len(demos) if isinstance(demos, list) else None, "created": meta.get("created")}


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


class Lres(Kept):
    """The LREs fitted in this session (by id, the last `KEEP_FITTED`) and the files kept loaded.
    Fits and loads run on the model thread; the listing reads the fitted ones from another."""

    def __init__(self, model) -> None:
        super().__init__("fit", "LRE fitted as", KEEP_FITTED, "fit it again, or save fits and load the file.")
        self.model = model
        self._loaded: OrderedDict = OrderedDict()

    def fitted(self) -> list[dict]:
        return [{"id": k, "relation": v.relation, "layer": v.layer, "beta": v.beta, "n_demos": len(v.demos)}
                for k, v in self.items()]

    def get(self, fitted: str | None, path: Path | None = None):
        """The LRE fitted as `fitted` (an id), or the one in the file at `path` (resolved in the LRE folders)."""
        from lmscope.relations.lre import LRE

        if fitted is not None:
            return super().get(fitted)
        key = (str(path), _mtime(path), _mtime(Path(f"{path}.json")))
        if key not in self._loaded:
            self._loaded[key] = LRE.load(path, model=self.model)
            while len(self._loaded) > KEEP_LOADED:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return self._loaded[key]


# ---- the actions (on the model thread) ------------------------------------------------------------

def fit(model, req, lres: Lres, save: Path | None) -> dict:
    """An LRE of a shipped relation at one layer, fitted on the first `n_train` of its first
    `max_facts` facts that the model answers with an `n_train`-shot prompt; saved at `save`
    (resolved in the LRE folders by `LreTargets`) when given."""
    from lmscope.datasets.relations import load_relation
    from lmscope.relations.facts import read_facts
    from lmscope.relations.lre import fit_lre

    t0 = time.perf_counter()
    rel = load_relation(req.relation, template=req.template)
    n = model.n_layers
    if not -n <= req.layer < n:
        raise InputError(f"Layer {req.layer} is out of range for {model.name} ({n} layers: 0..{n - 1}, or -{n}..-1).")
    if save is not None and save.exists():
        if not req.overwrite:
            raise ArtifactError(f"{short(req.save, 120)} exists; pick another name, or set overwrite to replace it.")
        if sidecar_kind(save) != "lre":
            raise ArtifactError(f"{short(req.save, 120)} exists and is not an LRE artifact; the studio replaces only "
                                "LRE files. Pick another name.")
    pool = list(rel.pairs[:req.max_facts])
    known = read_facts(model, rel, pool, pool[:req.n_train], batch_size=8).known.tolist()
    good = [p for p, k in zip(pool, known, strict=True) if k]
    if len(good) < req.n_train:
        raise InputError(f"{model.name} answers only {len(good)} of the first {len(pool)} {rel.name} facts with a "
                         f"{req.n_train}-shot prompt; fitting needs {req.n_train} it knows. Lower n_train, raise "
                         "max_facts, or pick another relation.")
    train = good[:req.n_train]
    lre = fit_lre(model, rel, layer=req.layer, demos=train, beta=req.beta)
    key = lres.add(lre)
    if save is not None:
        lre.save(save, model)
    return json_safe({"id": key, "lre": lre.to_dict(), "relation": rel.name, "type": rel.type,
                      "n_examined": len(pool), "n_known": len(good), "train": [list(p) for p in train],
                      "held_out": [list(p) for p in good[req.n_train:]], "saved": req.save if save else None,
                      "seconds": time.perf_counter() - t0})


def lens(model, lre, req, max_positions: int) -> dict:
    """`attribute_lens(model, lre, prompt, target=...)` (it holds one layer's probabilities at a time)."""
    from lmscope.relations.attribute_lens import attribute_lens

    n_pos = int(model.tokenize(req.prompt).input_ids.shape[1])
    layers = list(range(model.n_layers)) if req.layers is None else list(req.layers)
    if n_pos > max_positions:
        raise InputError(f"The attribute lens reads every layer x position: this prompt is {n_pos} tokens, and on "
                         f"{model.name} ({model.n_layers} layers, vocabulary {model.d_vocab:,}) the studio reads at "
                         f"most {max_positions} (a bound on response size and on the time the model is held). "
                         "Shorten the prompt.")
    out = attribute_lens(model, lre, req.prompt, target=req.target, layers=layers).to_dict()
    return json_safe({**out, "lre": lre.to_dict()})


def _prefix(token: str, objects: list[str]) -> bool:
    """The paper's check (`relations.prompts.is_prefix`) against any of the subject's objects."""
    from lmscope.relations.prompts import is_prefix

    return any(is_prefix(token, o) for o in objects)


def predict(model, lre, req, max_tokens: int) -> dict:
    """`predict_objects` for the subjects, the relation's own objects for each (when the LRE's
    relation is shipped) and whether the LRE's and the model's top-1 tokens start one."""
    from lmscope.datasets.relations import Relation, load_relation, shipped_relations
    from lmscope.relations.prompts import icl_prompt
    from lmscope.relations.study import predict_objects

    if not lre.template:
        raise InputError("This LRE has no prompt template in its sidecar, so its few-shot prompts cannot be built.")
    subjects = [s.strip() for s in req.subjects]
    rel = Relation(lre.relation or "relation", lre.template, tuple(lre.demos), "user")
    for s in subjects:  # the demonstrations come from the LRE file: bound the prompt like any other
        n = int(model.tokenize(icl_prompt(rel, s, lre.demos)[0]).input_ids.shape[1])
        if n > max_tokens:
            raise InputError(f"The few-shot prompt for {short(s, 40)} is {n} tokens; the studio takes at most "
                             f"{max_tokens}. Use shorter subjects or an LRE with fewer demonstrations.")
    pred = predict_objects(model, lre, subjects, rel=rel, k=req.k).to_dict()
    facts: dict[str, list[str]] = {}
    if lre.relation in {r["relation"] for r in shipped_relations()}:
        for s, o in load_relation(lre.relation).pairs:
            facts.setdefault(s, []).append(o)
    objects = [facts.get(s, []) for s in subjects]
    return json_safe({**pred, "objects": objects,
                      "lre_correct": [_prefix(t[0][0], o) if o else None for t, o in zip(pred["lre_top"], objects,
                                                                                          strict=True)],
                      "model_correct": [_prefix(t[0][0], o) if o else None for t, o in zip(pred["model_top"], objects,
                                                                                            strict=True)],
                      "agree": [a[0][0].strip() == b[0][0].strip() for a, b in zip(pred["lre_top"], pred["model_top"],
                                                                                     strict=True)],
                      "lre": lre.to_dict()})
