"""Compression statistics: figures plus per-layer tables, printable as text or drawn as a PNG."""

from __future__ import annotations

import numbers
from pathlib import Path

__all__ = ["CompressionStatistics", "format_table", "PLOT_COLUMNS"]

#: Numeric table columns that `CompressionStatistics.plot` draws, one panel per table column.
PLOT_COLUMNS = ("bits", "sparsity", "kept filters")
# A numeric column giving the total behind "kept filters" (drawn as a light background bar).
_TOTAL_COLUMNS = ("total filters", "filters")
def format_table(header, rows):
    """Formats rows as a plain-text table with aligned columns.

    Example:
        >>> print(format_table(["a", "b"], [[1, "xy"]]))
        a | b
        --+---
        1 | xy
    """
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class CompressionStatistics:
    """What each algorithm did to the model.

    Attributes:
        sections: {algorithm name: {"figures": {name: number}, table name: (header, rows), ...,
            "skipped": {layer: reason}}}.

    `str(stats)` is a readable report; `stats.figures()` is a flat dict of numbers such as
    `{"quantization/weight_quantizers": 53}` (`progress_figures()` the ones that move during
    training); `stats.plot("stats.png")` draws the per-layer bits, sparsity and kept filters, with
    what differs between layers first.

    Example:
        ```python
        stats = CompressionStatistics(
            {"magnitude_sparsity": {"figures": {"sparsity_level": 0.5},
                                    "layers": (["layer", "weights", "sparsity"], [["conv1", 288, 0.5]])}}
        )
        stats.figures()  # {'magnitude_sparsity/sparsity_level': 0.5}
        ```
    """

    def __init__(self, sections, progress=None):
        self.sections = sections
        self.progress = {name: tuple(names) for name, names in (progress or {}).items()}

    def figures(self):
        """All numeric figures as `{"algorithm/figure": value}`."""
        return {
            f"{name}/{key}": value
            for name, section in self.sections.items()
            for key, value in section.get("figures", {}).items()
        }

    def progress_figures(self):
        """The figures that move during training (each algorithm's `progress_figures`: the level a
        schedule asks for now and what the model has reached), as `{"algorithm/figure": value}`.

        These are what `ctrl.callbacks()` puts into the `logs` of every epoch; `figures()` has all.
        """
        return {
            f"{name}/{key}": value
            for name, section in self.sections.items()
            for key, value in section.get("figures", {}).items()
            if key in self.progress.get(name, ())
        }

    def skipped(self):
        """`{layer: reason}` for every layer an algorithm left uncompressed."""
        out = {}
        for name, section in self.sections.items():
            for layer, reason in section.get("skipped", {}).items():
                out[layer] = f"{name}: {reason}"
        return out

    def __str__(self):
        parts = []
        for name, section in self.sections.items():
            parts.append(f"== {name} ==")
            figures = section.get("figures", {})
            if figures:
                parts.append(format_table(["figure", "value"], list(figures.items())))
            for key, value in section.items():
                if key in ("figures", "skipped"):
                    continue
                header, rows = value
                if rows:
                    parts.append(f"-- {key} --")
                    parts.append(format_table(header, rows))
            skipped = section.get("skipped", {})
            if skipped:
                parts.append("-- left uncompressed --")
                parts.append(format_table(["layer", "reason"], list(skipped.items())))
        return "\n".join(parts)

    __repr__ = __str__

    def tables(self):
        """Yields `(algorithm, table name, header, rows)` for every non-empty table."""
        for name, section in self.sections.items():
            for key, value in section.items():
                if key in ("figures", "skipped"):
                    continue
                header, rows = value
                if rows:
                    yield name, key, list(header), list(rows)

    def plot_panels(self, columns=PLOT_COLUMNS):
        """The per-layer series `plot` draws, without drawing them.

        Every table column whose name is in `columns` becomes one panel of its numeric cells (other
        cells are left out); a table with a "filters" column gives each kept-filters bar its total.
        A row's label joins its text cells left of the first drawn column (`conv1/kernel` for the
        quantization weights table).

        Args:
            columns: column names to draw (case-insensitive; "filters kept" counts as
                "kept filters").

        Returns:
            A list of dicts `{"title", "column", "labels", "values", "totals"}`; `totals` holds
            each row's total filters where the table gives them, else None.
        """
        wanted = {_column_key(c) for c in columns}
        panels = []
        for algorithm, table, header, rows in self.tables():
            names = [_column_key(h) for h in header]
            plotted = [i for i, h in enumerate(names) if h in wanted]
            total_index = next((names.index(t) for t in _TOTAL_COLUMNS if t in names), None)
            for index in plotted:
                labels, values, totals = [], [], []
                for row in rows:
                    value = _number(row[index])
                    if value is None:
                        continue
                    total = _number(row[total_index]) if total_index is not None else None
                    text = [str(c) for c in row[: plotted[0]] if isinstance(c, str)]
                    labels.append("/".join(text) or str(len(labels)))
                    values.append(value)
                    totals.append(total)
                if values:
                    panels.append(
                        {
                            "title": f"{algorithm}: {table}",
                            "column": header[index],
                            "labels": labels,
                            "values": values,
                            "totals": totals if any(t is not None for t in totals) else None,
                        }
                    )
        return panels

    def layer_overview(self, columns=PLOT_COLUMNS):
        """What differs between layers: one row per layer, one column per drawn table column.

        Made of the `plot_panels` whose rows are layers of the model (their labels start with a
        layer name that another panel also has: weight bits, sparsity, kept filters); a row's
        label is the layer name (`conv1` for `conv1/kernel`). A cell `differs` when most layers
        of its column share one value and this cell's is another; its `strength` goes from 0 (the
        least compressed layer of the column: most bits, least sparsity, most filters kept) to 1
        (the most compressed), and is 0 in a column where every layer has the same value.

        Returns:
            `{"rows": [layer], "columns": [column title], "cells": [[cell or None]]}` where a cell
            is `{"text", "value", "share", "differs", "strength"}` (`share` is value / total for
            kept filters, else the value), or None when fewer than two columns describe layers.
        """
        panels = self.plot_panels(columns)
        keys = [[label.split("/")[0] for label in panel["labels"]] for panel in panels]
        shared = [i for i, k in enumerate(keys) if any(set(k) & set(other) for j, other in enumerate(keys) if j != i)]
        if len(shared) < 2:
            return None
        rows = list(dict.fromkeys(key for i in shared for key in keys[i]))
        columns_out, grid = [], [[None] * len(shared) for _ in rows]
        for c, index in enumerate(shared):
            panel = panels[index]
            columns_out.append(f"{panel['column']}\n({panel['title']})")
            totals = panel["totals"] or [None] * len(panel["values"])
            shares = [_share(v, t) for v, t in zip(panel["values"], totals)]
            common = max(sorted(set(shares)), key=shares.count)
            low, high = min(shares), max(shares)
            more_is_stronger = _column_key(panel["column"]) == "sparsity"
            for key, value, total, share in zip(keys[index], panel["values"], totals, shares):
                strength = (share - low) / (high - low) if high > low else 0.0
                grid[rows.index(key)][c] = {
                    "text": _value_text(panel["column"], value, total), "value": value, "share": share,
                    "differs": shares.count(common) > 1 and share != common,
                    "strength": strength if more_is_stronger else (1.0 - strength if high > low else 0.0),
                }  # fmt: skip
        return {"rows": rows, "columns": columns_out, "cells": grid}

    def plot(self, path, columns=PLOT_COLUMNS, dpi=100):
        """Draws per-layer bits, sparsity and kept filters in a PNG, with the value on every bar.

        The figure starts with what differs between layers (`layer_overview`: a grid of layers by
        bits / sparsity / kept filters, the cells that depart from the common value colored),
        when at least two columns describe the same layers. Then one panel of horizontal bars per
        table column named in `columns` (see `plot_panels`), each bar labeled with its value; a
        column with the same value for every row (uniform 8-bit) is one bar, "all N". Needs
        matplotlib, imported only here.

        Args:
            path: the PNG file to write (its folder is created).
            columns: column names to draw.
            dpi: resolution.

        Returns:
            `path` as a `pathlib.Path`.

        Raises:
            ValueError: no table has a numeric column named in `columns`.

        Example:
            ```python
            ctrl.statistics().plot("stats.png")
            ```
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError("`CompressionStatistics.plot` needs matplotlib: pip install matplotlib") from err

        panels = [_collapse_uniform(panel) for panel in self.plot_panels(columns)]
        if not panels:
            found = sorted({h for _, _, header, _ in self.tables() for h in header})
            raise ValueError(
                f"No table has a numeric column named one of {list(columns)}. Received tables "
                f"with columns: {found}"
            )
        overview = self.layer_overview(columns)
        heights = [0.75 + 0.22 * len(p["labels"]) for p in panels]
        if overview:
            heights.insert(0, 1.0 + 0.25 * len(overview["rows"]))
        figure = Figure(figsize=(8, sum(heights)), layout="constrained")
        axes = list(figure.subplots(len(heights), 1, squeeze=False, height_ratios=heights)[:, 0])
        if overview:
            _draw_overview(axes.pop(0), overview)
        for ax, panel in zip(axes, panels):
            _draw_bars(ax, panel)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi, format="png")
        return path


def _share(value, total):
    return value / total if total else value


def _value_text(column, value, total=None):
    """`32/64` for kept filters, `40%` for sparsity, `8` for bits."""
    def number(x):
        return str(int(x)) if float(x).is_integer() else f"{x:.3g}"

    if total is not None:
        return f"{number(value)}/{number(total)}"
    if _column_key(column) == "sparsity":
        return f"{100 * value:.0f}%"
    return number(value)


def _collapse_uniform(panel):
    """A panel whose rows all have one value becomes one bar, labeled `all N`."""
    pairs = set(zip(panel["values"], panel["totals"] or [None] * len(panel["values"])))
    if len(panel["values"]) < 2 or len(pairs) > 1:
        return panel
    (value, total), = pairs
    count = len(panel["values"])
    return {**panel, "labels": [f"all {count}"], "values": [value], "totals": None if total is None else [total],
            "note": f"the same for all {count} ({panel['labels'][0]} ... {panel['labels'][-1]})"}


def _draw_bars(ax, panel):
    positions = list(range(len(panel["labels"])))
    totals = None if panel["totals"] is None else [t if t is not None else 0.0 for t in panel["totals"]]
    if totals is not None:
        ax.barh(positions, totals, color="#d9d9d9", label="total")
    bars = ax.barh(positions, panel["values"], color="#1f77b4", label=panel["column"])
    texts = [_value_text(panel["column"], v, t) for v, t in zip(panel["values"], totals or [None] * len(positions))]
    ax.bar_label(bars, texts, padding=3, fontsize=7)
    ax.set_yticks(positions, panel["labels"], fontsize=7)
    ax.invert_yaxis()
    note = f", {panel['note']}" if panel.get("note") else ""
    ax.set_title(f"{panel['title']}: {panel['column']}{note}", fontsize=9, loc="left")
    ax.tick_params(axis="x", labelsize=7)
    right = max(totals or panel["values"])
    key = _column_key(panel["column"])
    if key == "sparsity":
        right = 1.0
    elif key == "bits":
        right = max(8.0, right)
    ax.set_xlim(0, right * 1.12)  # room for the value labels
    if totals is not None:
        ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1, 1), ncols=2, frameon=False)


def _draw_overview(ax, overview):
    rows, columns, cells = overview["rows"], overview["columns"], overview["cells"]
    ax.set_xlim(0, len(columns))
    ax.set_ylim(len(rows), 0)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            ax.add_patch(_rectangle((c, r), _shade(None if cell is None else cell["strength"])))
            text = "-" if cell is None else cell["text"]
            ax.text(c + 0.5, r + 0.5, text, ha="center", va="center", fontsize=8,
                    fontweight="bold" if cell is not None and cell["differs"] else "normal")  # fmt: skip
    ax.set_xticks([c + 0.5 for c in range(len(columns))], columns, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([r + 0.5 for r in range(len(rows))], rows, fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title("per layer: the darker, the more compressed; bold where a layer differs from most",
                 fontsize=9, loc="left")  # fmt: skip


def _shade(strength):
    """White for no cell; from light grey-blue (strength 0) to orange (1, the most compressed)."""
    if strength is None:
        return "#ffffff"
    light, strong = (0xEE, 0xF1, 0xF5), (0xF5, 0x9F, 0x3A)
    return "#" + "".join(f"{round(a + (b - a) * strength):02x}" for a, b in zip(light, strong))


def _rectangle(corner, color):
    from matplotlib.patches import Rectangle

    return Rectangle(corner, 1, 1, facecolor=color, edgecolor="white", linewidth=1.5)


def _column_key(name):
    key = " ".join(str(name).lower().split())
    return "kept filters" if key == "filters kept" else key


def _number(cell):
    """A table cell as a float, or None when it is not a number."""
    if isinstance(cell, numbers.Real) and not isinstance(cell, bool):
        return float(cell)
    return None
