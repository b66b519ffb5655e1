"""Every plot function returns the Path it wrote, through one atomic writer (`plots._mpl`)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from lmscope.engine.errors import InputError
from lmscope.plots._mpl import pyplot, save, save_text

PLOTS = Path(__file__).resolve().parents[2] / "src" / "lmscope" / "plots"
MODULES = sorted(p.stem for p in PLOTS.glob("*_plots.py"))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_save_writes_atomically_and_returns_the_path(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save(fig, tmp_path / "sub" / "a.png")
    assert out == tmp_path / "sub" / "a.png" and out.read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number) and _leftovers(out.parent) == []
    fig, _ = plt.subplots()
    assert save(fig, tmp_path / "b.svg", bbox_tight=True).read_text().lstrip().startswith("<?xml")
    assert save_text("<p>é</p>", tmp_path / "p.html").read_text(encoding="utf-8") == "<p>é</p>"


def test_a_failed_save_keeps_the_previous_file_and_no_temp(tmp_path):
    plt = pyplot()
    path = save_text("old", tmp_path / "x.png")
    fig, _ = plt.subplots()

    def broken(*a, **k):
        raise RuntimeError("killed mid-write")

    fig.savefig = broken
    with pytest.raises(RuntimeError):
        save(fig, path)
    assert path.read_text() == "old" and _leftovers(tmp_path) == [] and not plt.fignum_exists(fig.number)
    fig, _ = plt.subplots()
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match="Cannot write"):
        save(fig, tmp_path / "dir.png")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", MODULES)
def test_every_plot_function_returns_a_path_and_writes_through_the_helper(name):
    mod = importlib.import_module(f"lmscope.plots.{name}")
    public = [f for n, f in vars(mod).items() if inspect.isfunction(f) and f.__module__ == mod.__name__
              and "path" in inspect.signature(f).parameters]  # every function that writes a file
    assert public
    for f in public:
        assert inspect.signature(f).return_annotation in ("Path", Path), f"{name}.{f.__name__} must return Path"
    tree = ast.parse((PLOTS / f"{name}.py").read_text())
    direct = [node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Attribute) and node.func.attr in ("savefig", "write_text", "write_bytes")]
    assert not direct, f"{name} writes files itself ({direct}); use plots._mpl.save / save_text"
