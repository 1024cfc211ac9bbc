"""Compression statistics: figures plus per-layer tables, printable as text or drawn as a PNG."""

from __future__ import annotations

import numbers
import re
from pathlib import Path

__all__ = ["CompressionStatistics", "format_table", "PLOT_COLUMNS", "PROGRESS_FIGURES"]

#: Numeric table columns that `CompressionStatistics.plot` draws, one panel per table column.
PLOT_COLUMNS = ("bits", "sparsity", "kept filters")
# A numeric column giving the total behind "kept filters" (drawn as a light background bar).
_TOTAL_COLUMNS = ("total filters", "filters")
#: Figures that move while a model is compressed: the level a schedule asks for now
#: (`pruning_level`, `filter_level`, `target_level`) and what the model has reached
#: (`sparsity_level`, `pruned_filters`, `flops_ratio`). `progress_figures()` keeps these; the
#: others (quantizer counts, full FLOPs, ...) do not change during training.
PROGRESS_FIGURES = ("pruning_level", "filter_level", "pruned_filters", "flops_ratio", "target_level", "sparsity_level")


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
    `{"quantization/weight_quantizers": 53}`; `stats.plot("stats.png")` draws the per-layer
    bits, sparsity and kept filters.

    Example:
        ```python
        stats = CompressionStatistics(
            {"magnitude_sparsity": {"figures": {"sparsity_level": 0.5},
                                    "layers": (["layer", "weights", "sparsity"], [["conv1", 288, 0.5]])}}
        )
        stats.figures()  # {'magnitude_sparsity/sparsity_level': 0.5}
        ```
    """

    def __init__(self, sections):
        self.sections = sections

    def figures(self):
        """All numeric figures as `{"algorithm/figure": value}`."""
        return {
            f"{name}/{key}": value
            for name, section in self.sections.items()
            for key, value in section.get("figures", {}).items()
        }

    def progress_figures(self):
        """The figures that move during training (`PROGRESS_FIGURES`), as `{"algorithm/figure": value}`.

        These are what `ctrl.callbacks()` puts into the `logs` of every epoch; `figures()` has all.
        """
        return {key: value for key, value in self.figures().items() if key.rsplit("/", 1)[-1] in PROGRESS_FIGURES}

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

        Every table column whose name is in `columns` becomes one panel. A cell is a number or
        a `"kept/total"` string (as the filter pruning table writes kept filters); other cells
        are left out. A row's label joins its text cells left of the first drawn column
        (`conv1/kernel` for the quantization weights table).

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
                    value, total = _number_and_total(row[index])
                    if value is None:
                        continue
                    if total is None and total_index is not None:
                        total = _number_and_total(row[total_index])[0]
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

    def plot(self, path, columns=PLOT_COLUMNS, dpi=100):
        """Draws the per-layer bits, sparsity and kept filters as horizontal bars in a PNG.

        One panel per table column named in `columns` (see `plot_panels`), so it covers every
        algorithm whose statistics have such a table. Needs matplotlib, imported only here.

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

        panels = self.plot_panels(columns)
        if not panels:
            found = sorted({h for _, _, header, _ in self.tables() for h in header})
            raise ValueError(
                f"No table has a numeric column named one of {list(columns)}. Received tables "
                f"with columns: {found}"
            )
        heights = [0.8 + 0.2 * len(p["labels"]) for p in panels]
        figure = Figure(figsize=(8, sum(heights)), layout="constrained")
        axes = figure.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
        for ax, panel in zip(axes, panels):
            positions = range(len(panel["labels"]))
            if panel["totals"] is not None:
                totals = [t if t is not None else 0.0 for t in panel["totals"]]
                ax.barh(positions, totals, color="#d9d9d9", label="total")
            ax.barh(positions, panel["values"], color="#1f77b4", label=panel["column"])
            ax.set_yticks(list(positions), panel["labels"], fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{panel['title']}: {panel['column']}", fontsize=9, loc="left")
            ax.tick_params(axis="x", labelsize=7)
            if _column_key(panel["column"]) == "sparsity":
                ax.set_xlim(0, 1)
            elif _column_key(panel["column"]) == "bits":
                ax.set_xlim(0, max(8, max(panel["values"])))
            if panel["totals"] is not None:
                ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1, 1), ncols=2, frameon=False)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi, format="png")
        return path


def _column_key(name):
    key = " ".join(str(name).lower().split())
    return "kept filters" if key == "filters kept" else key


def _number_and_total(cell):
    """`(value, total)` of a table cell: a number gives `(x, None)`, `"k/n"` gives `(k, n)`."""
    if isinstance(cell, numbers.Real) and not isinstance(cell, bool):
        return float(cell), None
    if isinstance(cell, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*", cell)
        if match:
            return float(match.group(1)), float(match.group(2))
    return None, None
