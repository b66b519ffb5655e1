"""Linear relational embeddings on the embedded models: faithfulness, causality and baselines
per relation and per relation type, and the time to fit one relation (docs/relations.md).

    python benchmarks/relations_real.py --model gemma-3-270m --out /tmp/rel_gemma.jsonl
    python benchmarks/relations_real.py --model smollm2-135m-instruct --relations adj_antonym verb_past_tense

Every relation runs with the default `RelationConfig` (nothing tuned per relation or per model);
one JSON line per relation goes to --out as it finishes, and a per-type summary is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import lmscope
from lmscope.datasets.relations import load_relation, shipped_relations
from lmscope.engine.errors import InputError
from lmscope.relations.study import RelationConfig, study

#: four relations per type by default (all 38 with --all)
DEFAULT = ["country_capital_city", "city_in_country", "country_language", "food_from_country",
           "adj_antonym", "adj_comparative", "verb_past_tense", "word_first_letter",
           "object_superclass", "fruit_inside_color", "word_sentiment", "work_location",
           "name_gender", "occupation_gender", "characteristic_gender", "name_religion"]
KEYS = ("n_facts", "n_known", "n_dev", "n_test", "n_objects", "layer", "beta", "rank", "faithfulness", "faithfulness_beta1",
        "causality", "causality_control", "baselines", "seconds_jacobians", "seconds_total", "seconds", "selected_on_test")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--relations", nargs="*", default=None)
    ap.add_argument("--all", action="store_true", help="every shipped relation")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = [r["relation"] for r in shipped_relations()] if args.all else (args.relations or DEFAULT)
    model = lmscope.load(args.model)
    rows = []
    for name in names:
        rel = load_relation(name)
        t = time.perf_counter()
        try:
            rep = study(model, rel, RelationConfig(seed=args.seed))
        except InputError as e:
            row = {"relation": name, "type": rel.type, "model": model.name, "skipped": str(e)}
        else:
            d = rep.to_dict()
            row = {"relation": name, "type": rel.type, "model": model.name, **{k: d[k] for k in KEYS}}
        row["wall_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"\n{model.name}: mean over relations of each type (skipped: too few known facts)", file=sys.stderr)
    for kind in ("factual", "linguistic", "commonsense", "bias"):
        ok = [r for r in rows if r["type"] == kind and "skipped" not in r]
        if not ok:
            continue
        def m(k: str, rows=ok) -> float:  # mean over the relations where it is defined (causality needs 2 objects)
            vals = [r[k] for r in rows if not math.isnan(r[k])]
            return statistics.mean(vals) if vals else math.nan

        def mb(k: str, rows=ok) -> float:
            return statistics.mean(r["baselines"][k] for r in rows)

        print(f"{kind:12s} n={len(ok)} faith {m('faithfulness'):.2f} (beta=1 {m('faithfulness_beta1'):.2f}) "
              f"causality {m('causality'):.2f} control {m('causality_control'):.2f} | logit lens "
              f"{mb('logit_lens'):.2f} translation {mb('translation'):.2f} regression {mb('regression'):.2f} "
              f"majority {mb('majority'):.2f} | "
              f"Jacobians {m('seconds_jacobians'):.0f} s, all {m('seconds_total'):.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
