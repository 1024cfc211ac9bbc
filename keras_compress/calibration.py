"""Calibration data: reading it as input batches, checking it against the model, running it in sub-batches.

Calibration data is what `kc.compress(..., dataset=...)` receives: a `tf.data.Dataset`, an `(x, y)`
tuple of arrays, an array (or list/dict of arrays) of inputs, a `keras.utils.PyDataset`, or any
iterable of batches, such as a Python list of `(x, y)` batches (`as_batches` tells a list of batches
from a list of one array per model input). Range init, BatchNorm adaptation and mixed precision read it
through here.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np

from keras_compress import backend
from keras_compress.graph import iter_layers

__all__ = [
    "EAGER_ACTIVATION_BUDGET",
    "INFINITE_DATA_LIMIT",
    "activation_bytes_per_sample",
    "as_batches",
    "check_sample_budget",
    "check_calibration_batch",
    "check_calibration_data",
    "iterate_batches",
    "one_shot_replay",
    "peek_batch",
    "run_batches",
    "split_batch",
]


def _first(element):
    """The model inputs of a dataset element: `x` of `(x, y[, w])`, else the element."""
    if isinstance(element, tuple) and len(element) in (2, 3):
        return element[0]
    return element


def _num_samples(x):
    return int(keras.tree.flatten(x)[0].shape[0])


def iterate_batches(dataset, batch_size=32):
    """Yields input batches (arrays, or lists/dicts of arrays) from calibration data.

    Args:
        dataset: a `tf.data.Dataset` (batched; elements `x` or `(x, y[, w])`), an `(x, y)`
            tuple of arrays, an array (or list/dict of arrays) of inputs, a
            `keras.utils.PyDataset`, or any iterable of batches.
        batch_size: batch size used to slice arrays.

    Raises:
        ValueError: when the data cannot be read as input batches.
    """
    def to_numpy(x):
        return keras.tree.map_structure(lambda t: np.asarray(t), x)

    if backend.is_tf_dataset(dataset):
        for element in dataset.as_numpy_iterator():
            yield _first(element)
        return
    leaves = keras.tree.flatten(dataset) if isinstance(dataset, (tuple, list, dict)) else []
    arrays = bool(leaves) and all(_is_array(a) for a in leaves)
    if _is_array(dataset) or arrays:
        x = to_numpy(_first(dataset) if isinstance(dataset, tuple) else dataset)
        n = _num_samples(x)
        for start in range(0, n, batch_size):
            yield keras.tree.map_structure(lambda a: a[start : start + batch_size], x)
        return
    if isinstance(dataset, keras.utils.PyDataset):
        for i in range(len(dataset)):
            yield to_numpy(_first(dataset[i]))
        return
    try:
        iterator = iter(dataset)
    except TypeError:
        raise ValueError(
            "`dataset` must be a tf.data.Dataset, an (x, y) tuple of arrays, an array of "
            f"inputs or an iterable of batches. Received: dataset={type(dataset).__name__}"
        ) from None
    for element in iterator:
        yield to_numpy(_first(element))


def _is_array(a):
    return isinstance(a, np.ndarray) or backend.is_tensor(a)


def as_batches(model, dataset):
    """`dataset`, or for a Python list (or tuple) of batches an iterable of them that can be read many times.

    A list is read as batches when its items are `(x, y[, w])` tuples or dicts, or when the model has
    one input and the list holds several arrays; a list of one array per model input stays the
    inputs, and a 2- or 3-tuple of arrays stays `(x, y[, w])`.

    Example:
        >>> batches = [(np.zeros((4, 3)), np.zeros(4)) for _ in range(2)]
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> [x.shape for x in iterate_batches(as_batches(model, batches))]
        [(4, 3), (4, 3)]
    """
    if not isinstance(dataset, (list, tuple)) or not dataset:
        return dataset
    if isinstance(dataset, tuple) and len(dataset) in (2, 3) and all(_is_array(a) for a in keras.tree.flatten(dataset)):
        return dataset  # (x, y[, w]) of arrays
    items = list(dataset)
    if all(isinstance(item, (tuple, dict)) for item in items):
        return _Replay(items)
    specs = _input_specs(model)
    single_input = specs is None or len(specs) == 1  # a subclassed model is taken to have one input
    if single_input and len(items) > 1 and all(_is_array(item) for item in items):
        return _Replay(items)
    return dataset


def _input_specs(model):
    """`[(name, shape, dtype)]` of the model's inputs, in `model.inputs` order (or its
    `input_signature`), or None when the model has no symbolic inputs (an uncompressed subclassed
    model): its batches are then checked for emptiness and finiteness only."""
    signature = getattr(model, "input_signature", None)
    if signature is not None:
        return [(spec.name or f"input_{i}", tuple(spec.shape), str(spec.dtype)) for i, spec in enumerate(signature)]
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return [(t.name, tuple(t.shape), str(t.dtype)) for t in inputs] if inputs else None


def _match_inputs(specs, x):
    """Pairs each model input spec with its part of `x`: by name for a dict, else by position."""
    if specs is None:
        return [((f"input_{i}", None, ""), part) for i, part in enumerate(keras.tree.flatten(x))]
    if isinstance(x, dict):
        missing = [name for name, _, _ in specs if name not in x]
        if missing:
            raise ValueError(
                f"Calibration data must give every model input by name {[n for n, _, _ in specs]}. "
                f"Received: a dict with keys {sorted(map(str, x))}, missing {missing}."
            )
        return [(spec, x[spec[0]]) for spec in specs]
    leaves = keras.tree.flatten(x)
    if len(leaves) != len(specs):
        raise ValueError(
            f"Calibration data must give one array per model input: the model has {len(specs)} "
            f"input(s) {[n for n, _, _ in specs]}. Received: {len(leaves)} array(s)."
        )
    return list(zip(specs, leaves))


def _check_part(spec, shape, dtype, where):
    name, expected, expected_dtype = spec
    if expected is None:
        return
    shape = tuple(None if d is None else int(d) for d in shape)
    fits = len(shape) == len(expected) and all(
        e is None or d is None or e == d for e, d in zip(expected, shape)
    )
    if not fits:
        hint = ""
        if len(shape) == len(expected) - 1 and all(
            e is None or d is None or e == d for e, d in zip(expected[1:], shape)
        ):
            hint = (" It looks like single samples without the batch axis: batch the data "
                    "(for a tf.data.Dataset, `dataset.batch(32)`).")  # fmt: skip
        raise ValueError(
            f"Calibration data must match the model's inputs: input {name!r} expects shape "
            f"{expected} (batch first). Received: shape {shape}{where}.{hint}"
        )
    dtype = getattr(dtype, "as_numpy_dtype", dtype)  # a tf.DType
    kind = "S" if dtype == "string" else np.dtype(dtype).kind
    if kind not in "biuf" and "float" in expected_dtype:
        raise ValueError(
            f"Calibration data must be numeric: input {name!r} expects {expected_dtype}. "
            f"Received: dtype {dtype}{where}."
        )


def check_calibration_data(model, dataset):
    """Checks calibration data against the model's inputs before anything is run or cloned.

    In-memory arrays are checked for emptiness, structure, shapes and dtypes; a
    `tf.data.Dataset` by its `element_spec` (and a known cardinality of 0). Other iterables are
    checked batch by batch as they are read (`check_calibration_batch`).

    Args:
        model: the model the data is for (Functional).
        dataset: calibration data, as accepted by `iterate_batches`.

    Raises:
        ValueError: naming the input, the expected shape and what was received.
    """
    specs = _input_specs(model)
    if backend.is_tf_dataset(dataset):
        if backend.tf_dataset_cardinality(dataset) == 0:
            raise ValueError("Calibration data must not be empty. Received: a tf.data.Dataset with no elements.")
        for spec, part in _match_inputs(specs, _first(dataset.element_spec)):
            if backend.is_tf_tensor_spec(part):
                _check_part(spec, tuple(part.shape), part.dtype, " (tf.data element_spec)")
        return
    leaves = keras.tree.flatten(dataset) if isinstance(dataset, (tuple, list, dict)) else []
    arrays = bool(leaves) and all(_is_array(a) for a in leaves)
    if _is_array(dataset) or arrays:
        x = _first(dataset) if isinstance(dataset, tuple) else dataset
        if any(len(a.shape) == 0 or a.shape[0] == 0 for a in keras.tree.flatten(x)):
            raise ValueError(
                "Calibration data must hold at least one sample (the first axis is the batch). "
                f"Received: arrays of shapes {[tuple(a.shape) for a in keras.tree.flatten(x)]}."
            )
        for spec, part in _match_inputs(specs, x):
            _check_part(spec, tuple(part.shape), part.dtype, "")
    elif isinstance(dataset, (list, tuple)) and not dataset:
        raise ValueError("Calibration data must not be empty. Received: an empty list.")
    elif not hasattr(dataset, "__iter__") and not isinstance(dataset, keras.utils.PyDataset):
        list(iterate_batches(dataset))  # raises the error that names the accepted kinds


def check_calibration_batch(model_or_specs, x, step=0):
    """Checks one calibration batch: structure, shapes and dtypes, and that it is finite.

    NaN or Inf in calibration data is an error: BatchNorm adaptation would turn the moving
    statistics into NaN, and a range computed around them means nothing.

    Args:
        model_or_specs: the model (or its `_input_specs`).
        x: the input batch.
        step: the batch number, for the message.

    Raises:
        ValueError: naming the input and the batch.
    """
    specs = model_or_specs if isinstance(model_or_specs, list) else _input_specs(model_or_specs)
    where = f" in calibration batch {step}"
    for spec, part in _match_inputs(specs, x):
        part = np.asarray(part)
        _check_part(spec, part.shape, part.dtype, where)
        if part.dtype.kind == "f":
            bad = int(part.size - np.count_nonzero(np.isfinite(part)))
            if bad:
                raise ValueError(
                    "Calibration data must be finite (NaN/Inf would corrupt BatchNorm adaptation and "
                    f"quantizer ranges). Received: {bad} NaN/Inf value(s) in input {spec[0]!r}{where}. "
                    "Clean the data (for example `np.nan_to_num`) or drop those samples."
                )


def peek_batch(dataset):
    """The first input batch of calibration data, and the data to read from the start again.

    A one-shot iterator (a generator) gets its first element put back in front.

    Returns:
        `(batch or None, dataset)`: None when the data is empty.
    """
    try:
        one_shot = iter(dataset) is dataset
    except TypeError:
        one_shot = False
    if not one_shot:
        return next(iter(iterate_batches(dataset)), None), dataset
    element = next(dataset, None)
    if element is None:
        return None, dataset
    return next(iterate_batches(iter([element]))), itertools.chain([element], dataset)


class _Replay:
    """Elements kept in a list (read from a one-shot iterator, or given as a list), iterable any number
    of times."""

    def __init__(self, elements):
        self.elements = elements

    def __iter__(self):
        return iter(self.elements)


def one_shot_replay(dataset, num_samples):
    """`dataset` itself, or for a one-shot iterator (a generator) its first elements up to
    `num_samples` samples, kept so that each initializer can read them from the start.

    Example:
        >>> batches = one_shot_replay((np.zeros((4, 2)) for _ in range(3)), 6)
        >>> len(list(batches)), len(list(batches))
        (2, 2)
    """
    try:
        if iter(dataset) is not dataset:
            return dataset
    except TypeError:
        return dataset  # not iterable: `iterate_batches` says what is wrong
    elements, seen = [], 0
    for element in dataset:
        if seen >= num_samples:
            break
        elements.append(element)
        seen += _num_samples(keras.tree.map_structure(np.asarray, _first(element)))
    return _Replay(elements)


#: Most samples initialization reads from an infinite `tf.data.Dataset` (`dataset.repeat()`): asking for
#: more is refused, since reading would not end in reasonable time (100,000 ResNet50 samples take
#: hours on a CPU).
INFINITE_DATA_LIMIT = 100_000


def check_sample_budget(dataset, num_samples, keys):
    """Refuses an infinite `tf.data.Dataset` from which initialization would read more than
    `INFINITE_DATA_LIMIT` samples; says how much it reads from one within the limit.

    Args:
        dataset: the calibration data.
        num_samples: the most samples an initializer reads.
        keys: the config keys that ask for them, for the message.

    Returns:
        A notice to log for an infinite dataset, else None.

    Raises:
        ValueError: above the limit.
    """
    infinite = backend.is_tf_dataset(dataset) and backend.tf_dataset_cardinality(dataset) == backend.INFINITE_CARDINALITY
    if not infinite:
        return None
    if num_samples > INFINITE_DATA_LIMIT:
        raise ValueError(
            f"Calibration data from an infinite tf.data.Dataset must be read for at most {INFINITE_DATA_LIMIT} "
            f"samples, or initialization would not end. Received: an infinite dataset (`repeat()` without a "
            f"count) and a config that asks for {num_samples} samples ({keys}: `initializer.range."
            "num_init_samples`, `initializer.batchnorm_adaptation.num_bn_adaptation_samples`, "
            "`initializer.precision.num_data_points`). Pass finite data (`dataset.take(n)`) or ask for fewer "
            "samples."
        )
    return (f"Calibration data is an infinite tf.data.Dataset: initialization reads its first {num_samples} "
            f"samples ({keys}).")


#: Most bytes of layer outputs one eager calibration call may hold. A Functional model called
#: eagerly keeps every intermediate tensor until the call returns (ResNet50 at 224x224: about
#: 140 MiB per sample), so larger batches are split into sub-batches that fit.
EAGER_ACTIVATION_BUDGET = 1 << 30


def activation_bytes_per_sample(model):
    """Bytes of all layer outputs for one sample, from the static shapes (0 if unknown).

    Layers whose output shape is not fully static (or that are called more than once, so have
    no single `output`) are left out: the estimate is then a lower bound.
    """
    total = 0
    for layer in iter_layers(model, wrappers=False):
        try:
            outputs = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):
            continue
        for t in outputs:
            dims = tuple(t.shape)[1:]
            if all(d is not None for d in dims):
                total += int(np.prod(dims, dtype=np.int64)) * np.dtype(keras.backend.standardize_dtype(t.dtype)).itemsize
    return total


def split_batch(x, max_size):
    """Splits an input batch (array, or list/dict of arrays) into sub-batches of `max_size`."""
    n = _num_samples(x)
    if n <= max_size:
        return [x]
    return [keras.tree.map_structure(lambda a: a[i : i + max_size], x) for i in range(0, n, max_size)]


def run_batches(model, batches, num_samples, training=False, before_step=None, verbose=1,
                memory_budget=None):  # fmt: skip
    """Runs `model` eagerly on batches until `num_samples` samples, with a Keras progress bar.

    The bar ends at the samples actually read: at `num_samples`, or earlier when the data runs out.

    Batches whose layer outputs would exceed `memory_budget` bytes are run as sub-batches
    (each one a step: `before_step` is called before each), so peak memory stays bounded
    whatever batch size the calibration data has.

    Args:
        model: the Keras model.
        batches: iterable of input batches (see `iterate_batches`).
        num_samples: stop once this many samples went through.
        training: the `training` argument of the calls.
        before_step: optional `fn(step)` called before each model call.
        verbose: 0 prints nothing, 1 a progress bar, 2 one line at the end.
        memory_budget: most bytes of layer outputs per call (default `EAGER_ACTIVATION_BUDGET`).

    Returns:
        The number of samples used.

    Raises:
        ValueError: when a batch does not fit the model's inputs or holds NaN/Inf
            (`check_calibration_batch`).
    """
    progress = keras.utils.Progbar(num_samples, verbose=verbose, unit_name="sample")
    specs = _input_specs(model)
    budget = EAGER_ACTIVATION_BUDGET if memory_budget is None else memory_budget
    per_sample = activation_bytes_per_sample(model)
    max_size = max(1, budget // per_sample) if per_sample else None
    seen = step = 0
    for batch_index, batch in enumerate(batches):
        check_calibration_batch(specs, batch, batch_index)
        for x in split_batch(batch, max_size) if max_size else [batch]:
            if before_step is not None:
                before_step(step)
            model(x, training=training)
            step += 1
            seen += _num_samples(x)
            progress.update(min(seen, num_samples))
            if seen >= num_samples:
                return seen
    if seen:  # the data ran out before `num_samples`: end the bar where it is, on its own line
        progress.target = seen
        progress.update(seen, finalize=True)
    return seen
