"""Compression statistics: figures plus per-layer tables, printable as text."""

from __future__ import annotations

__all__ = ["CompressionStatistics", "format_table"]


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
    `{"quantization/weight_quantizers": 53}`.
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
