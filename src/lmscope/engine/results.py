"""Result objects at home in a notebook: JSON-ready, shown as the CLI's tables, convertible to pandas.

Every result object of a family mixes in `Result` and writes two methods:

- `to_dict()`: JSON-ready data (`json.dumps` accepts it; `jsonable` converts tensors and tuples);
- `table()`: the table the CLI prints, as a `Table` of plain values (numbers stay numbers),
  with the CLI's number formats. `tables()` lists more when the CLI prints several.

and gets `_repr_html_()` (Jupyter shows the tables) and `to_pandas()` (the first table as a
DataFrame). pandas is the optional extra `lmscope[notebook]`; nothing here imports it before
`to_pandas()` is called.

    class DoseResponse(Result):
        def table(self) -> Table:
            return Table(["value", "p(target)"], [[v, p] for v, p in zip(...)],
                         title="dose-response", formats={"p(target)": ".4f"})
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lmscope.engine.errors import InputError, LmscopeError

#: Rows `_repr_html_` shows of a table with no `max_rows` of its own; `to_pandas()` has all.
HTML_MAX_ROWS = 60

_STYLE = ("font-variant-numeric:tabular-nums;border-collapse:collapse;margin-bottom:.6em")


def jsonable(obj):
    """`obj` with tensors and arrays as (nested) lists, tuples as lists, dataclasses as dicts,
    paths as strings and mapping keys as strings: what `json.dumps` accepts."""
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, Mapping):
        return {k if isinstance(k, str) else str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return jsonable(obj.tolist())
    return str(obj)


def format_value(value, spec: str | None = None) -> str:
    """A cell as the CLI prints it: None -> "", NaN -> "-", numbers with `spec` (default
    ".4g" for floats), anything else with `str`."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec:
            return format(value, spec)
        return format(value, ".4g") if isinstance(value, float) else str(value)
    return str(value)


@dataclass(frozen=True)
class Table:
    """A table of plain values, as a result prints it.

    Attributes:
        columns: Column names (distinct).
        rows: One sequence of len(columns) plain values per row (str, int, float, bool, None).
        title: Shown above the table.
        formats: Column name -> format spec of its numbers (".3f", "+.3f", ".2%"); the
            values themselves stay unformatted (`to_pandas`, `records`).
        notes: Lines shown under the table (the CLI's summary lines).
        max_rows: Rows shown as HTML (None: `HTML_MAX_ROWS`); `to_pandas` has all of them.
    """

    columns: Sequence[str]
    rows: Sequence[Sequence]
    title: str = ""
    formats: Mapping[str, str] = field(default_factory=dict)
    notes: Sequence[str] = ()
    max_rows: int | None = None

    def __post_init__(self) -> None:
        if len(set(self.columns)) != len(self.columns):
            raise InputError(f"Table columns must be distinct, got {list(self.columns)}.")
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise InputError(f"Table row {i} has {len(row)} values for {len(self.columns)} columns "
                                 f"({list(self.columns)}).")
        unknown = set(self.formats) - set(self.columns)
        if unknown:
            raise InputError(f"Table formats name no column: {sorted(unknown)} (columns: {list(self.columns)}).")

    def text_rows(self) -> list[list[str]]:
        """Every row with its cells formatted as the CLI prints them."""
        specs = [self.formats.get(c) for c in self.columns]
        return [[format_value(v, s) for v, s in zip(row, specs, strict=True)] for row in self.rows]

    def records(self) -> list[dict]:
        """One {column: value} dict per row (JSON-ready when the values are)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_pandas(self):
        """The rows as a `pandas.DataFrame` (values unformatted; the title in `.attrs["title"]`)."""
        pd = _pandas()
        df = pd.DataFrame([list(r) for r in self.rows], columns=list(self.columns))
        df.attrs["title"] = self.title
        return df

    def to_html(self) -> str:
        """An HTML table (escaped; numbers right-aligned) with its title and notes."""
        limit = HTML_MAX_ROWS if self.max_rows is None else self.max_rows
        texts = self.text_rows()[:limit]
        out = [f'<table class="lmscope" style="{_STYLE}">']
        if self.title:
            out.append('<caption style="caption-side:top;text-align:left;font-weight:bold">'
                       f"{html.escape(self.title)}</caption>")
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in self.columns) + "</tr></thead>")
        out.append("<tbody>")
        for row, text in zip(self.rows, texts, strict=False):
            cells = []
            for v, t in zip(row, text, strict=True):
                num = isinstance(v, (int, float)) and not isinstance(v, bool)
                align = ' style="text-align:right"' if num else ' style="text-align:left;white-space:pre"'
                cells.append(f"<td{align}>{html.escape(t)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        if len(self.rows) > limit:
            out.append(f"<p><i>{len(self.rows) - limit} more rows not shown: to_pandas() or to_dict() has them all."
                       "</i></p>")
        out += [f"<p>{html.escape(n)}</p>" for n in self.notes]
        return "\n".join(out)


class Result:
    """Mixin of the result objects: `_repr_html_` and `to_pandas` from `table()` / `tables()`.

    A subclass writes `to_dict()` (JSON-ready) and `table()`; it overrides `tables()` when
    the CLI prints more than one table (`table()` stays the one `to_pandas` converts).
    """

    def to_dict(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} does not define to_dict()")

    def table(self) -> Table:
        raise NotImplementedError(f"{type(self).__name__} does not define table()")

    def tables(self) -> list[Table]:
        """Every table the CLI prints for this result (default: just `table()`)."""
        return [self.table()]

    def to_pandas(self):
        """`table()` as a `pandas.DataFrame` (needs the `lmscope[notebook]` extra)."""
        return self.table().to_pandas()

    def _repr_html_(self) -> str:
        body = "\n".join(t.to_html() for t in self.tables())
        return f'<div class="lmscope-result">\n{body}\n</div>'


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise LmscopeError("to_pandas() needs pandas, which lmscope leaves optional. Install it with "
                           "`pip install lmscope[notebook]` (or `pip install 'pandas>=2'`).") from None
    return pd
