"""Regenerate the README's Techniques section from docs/*.md (run after editing a doc)."""
import re, pathlib
root = pathlib.Path(__file__).resolve().parents[1]
readme = (root/"README.md").read_text()
order = [("lens.md","Logit lens, tuned lens, latent language (issue 3)"),
         ("inspect.md","Decomposition, token-space edits, Patchscopes, back-patching (issue 3)"),
         ("neurons.md","One neuron: record, top examples, correlation, ablation, dose-response (issue 4)"),
         ("atlas.md","Neuron atlas by LM-head decoding, clamping (issue 4)"),
         ("vectors.md","Steering vectors: contrastive directions, sweep, verify, algebra (issue 5)"),
         ("function_vectors.md","In-context task vectors and function vectors (issue 5)"),
         ("studio.md","The web studio")]
parts = []
toc = []
for fname, title in order:
    p = root/"docs"/fname
    if not p.exists(): continue
    text = p.read_text().strip()
    lines = text.splitlines()
    if lines and lines[0].startswith("#"): lines = lines[1:]
    out, fence = [], False
    for l in lines:
        if l.lstrip().startswith("```"): fence = not fence
        out.append("#" + l if l.startswith("#") and not fence else l)
    body = "\n".join(out)
        # relative links/images inside docs/ must point into docs/ from the README
    body = re.sub(r"\]\((?!https?://|#|docs/|/)([^)]+)\)", r"](docs/\1)", body)
    anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
    toc.append(f"- [{title}](#{anchor})")
    parts.append(f"### {title}\n\n(Also in [docs/{fname}](docs/{fname}).)\n{body}\n")
start = readme.index("<!-- techniques -->")
readme = readme[:start] + "<!-- techniques -->\n\n" + "\n".join(toc) + "\n\n" + "\n".join(parts)
(root/"README.md").write_text(readme)
