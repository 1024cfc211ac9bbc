"""Helpers shared by the benchmark scripts: Markdown tables, machine and version description."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Distributions whose versions every benchmark page lists.
PACKAGES = (
    "keras-compress",
    "tensorflow",
    "keras",
    "tf-keras",
    "tensorflow-model-optimization",
    "openvino",
    "nncf",
    "numpy",
    "scikit-learn",
)


def md_table(header, rows):
    """A GitHub/MkDocs Markdown table; floats get 4 significant digits."""

    def cell(value):
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_description():
    """CPU model name, logical cores, and the ISA flags that matter for INT8/bf16."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "unknown CPU", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} logical cores" + (f" ({', '.join(isa)})" if isa else "")


def memory_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def versions():
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_markdown():
    """The machine and software the numbers were measured with, as Markdown."""
    memory = memory_gib()
    lines = [
        f"- CPU: {cpu_description()}",
        f"- Memory: {memory:.0f} GiB" if memory else "- Memory: unknown",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        f"- keras_compress commit: `{git_commit()}`",
        "",
        md_table(["package", "version"], list(versions().items())),
    ]
    return "\n".join(lines)
