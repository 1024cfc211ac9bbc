"""Text the benchmarks can make with no download: the Python standard library's own source files.

Two uses:
- `module_lines`: lines of source code labelled by the standard-library package they come from
  (a text-classification task), as byte ids of a fixed length;
- `source_bytes`: the concatenated source of a list of modules or packages as one byte stream
  (language modelling, with a byte-level vocabulary of 256 ids).

Everything is read from `sysconfig.get_paths()["stdlib"]`, so the figures depend on the Python
version the benchmark runs with (the benchmark pages name it).
"""

from __future__ import annotations

import collections
import re
import sysconfig
from pathlib import Path

import numpy as np

__all__ = ["STDLIB", "source_files", "module_lines", "source_bytes", "encode_lines", "word_vocabulary", "encode_words"]

#: Words of a line for the word-level vocabulary: identifiers, numbers, single punctuation characters.
WORD = re.compile(r"[A-Za-z_]+|[0-9]+|\S")

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def source_files(name):
    """The `.py` files of a standard-library module (`"argparse"`) or package (`"asyncio"`), sorted, tests
    excluded."""
    single = STDLIB / f"{name}.py"
    if single.is_file():
        return [single]
    folder = STDLIB / name
    if not folder.is_dir():
        raise ValueError(f"`{name}` is not a module or package of {STDLIB}")
    return sorted(f for f in folder.rglob("*.py") if not any("test" in part for part in f.relative_to(STDLIB).parts))


def _lines(name, min_chars):
    lines = []
    for path in source_files(name):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if len(line) >= min_chars and not line.startswith("#"):
                lines.append(line)
    return lines


def encode_lines(lines, maxlen):
    """Byte ids (UTF-8) of each line, cut or zero-padded to `maxlen` (a source line has no byte 0)."""
    ids = np.zeros((len(lines), maxlen), "int32")
    for i, line in enumerate(lines):
        data = np.frombuffer(line.encode("utf-8")[:maxlen], np.uint8)
        ids[i, : len(data)] = data
    return ids


def word_vocabulary(lines, size):
    """The `size - 2` most frequent words of `lines` (ids 2..size-1; 0 pads, 1 is any other word)."""
    counts = collections.Counter(word for line in lines for word in WORD.findall(line))
    return {word: i + 2 for i, (word, _) in enumerate(counts.most_common(size - 2))}


def encode_words(lines, vocabulary, maxlen):
    """Word ids of each line (`word_vocabulary`), cut or zero-padded to `maxlen`."""
    ids = np.zeros((len(lines), maxlen), "int32")
    for i, line in enumerate(lines):
        words = [vocabulary.get(word, 1) for word in WORD.findall(line)[:maxlen]]
        ids[i, : len(words)] = words
    return ids


def module_lines(modules, maxlen=64, per_class=4000, test_share=0.2, min_chars=8, vocabulary=None, seed=0):
    """A text-classification task: which of `modules` a line of source code comes from.

    Lines are stripped; comment lines and lines under `min_chars` characters are dropped; a line
    that occurs in two modules is dropped (it cannot be classified), one that occurs twice in a
    module is kept once. Each class keeps `per_class` lines drawn at random (`seed`), then the lines
    are split at random into train and test.

    Args:
        vocabulary: None for byte ids (`encode_lines`), or the size of a word vocabulary built from
            the training lines (`word_vocabulary`, `encode_words`).

    Returns:
        `(x_train, y_train), (x_test, y_test)`: ids `(n, maxlen)` int32 and labels int32.
    """
    rng = np.random.default_rng(seed)
    per_module = [sorted(set(_lines(name, min_chars))) for name in modules]
    owners = {}
    for label, lines in enumerate(per_module):
        for line in lines:
            owners.setdefault(line, set()).add(label)
    texts, labels = [], []
    for label, lines in enumerate(per_module):
        lines = [line for line in lines if len(owners[line]) == 1]
        chosen = rng.permutation(len(lines))[:per_class]
        texts += [lines[i] for i in chosen]
        labels += [label] * len(chosen)
    y = np.asarray(labels, "int32")
    order = rng.permutation(len(y))
    test = int(round(test_share * len(y)))
    train, test = order[test:], order[:test]
    if vocabulary is None:
        x = encode_lines(texts, maxlen)
    else:
        words = word_vocabulary([texts[i] for i in train], vocabulary)
        x = encode_words(texts, words, maxlen)
    return (x[train], y[train]), (x[test], y[test])


def source_bytes(modules):
    """The UTF-8 bytes of the source files of `modules` (modules or packages), concatenated, as
    int32 ids 0..255."""
    data = b"".join(path.read_bytes() for name in modules for path in source_files(name))
    return np.frombuffer(data, np.uint8).astype("int32")
