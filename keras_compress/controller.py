"""`kc.compress` and the `CompressionController` it returns (it knows the algorithms only through the
`CompressionAlgorithm` interface and the registry, `keras_compress.algorithms`).

The path of a config through `kc.compress`:
1. `load_config` validates it (pydantic, JSON-path errors);
2. calibration data and scopes are checked against the model, and one algorithm object is built
   per `compression` section (`keras_compress.algorithms.ALGORITHMS`);
3. `transform_model` copies the model (graphs, composite layers, subclassed models): every
   algorithm's `wrap` swaps layers for wrappers (masking algorithms innermost, quantization
   outermost) and its `plan` inserts layers on graph edges;
4. the controller runs the initializers on the calibration data (see `CompressionAlgorithm`);
5. `ctrl.callbacks()` then drive the schedules inside `model.fit`.

A model that is already compressed (a loaded `.keras` file) is not compressed again: `kc.compress`
binds a controller to it, and the schedules continue from the progress saved in the model.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import keras

from keras_compress.accuracy_aware import AccuracyAwareCallback
from keras_compress.algorithm import CompressionAlgorithm
from keras_compress.algorithms import build_algorithms, compressed_with
from keras_compress.base_layer import CompressionLayer
from keras_compress.bn_adaptation import adapt_batchnorm, batchnorm_layers
from keras_compress.calibration import (
    as_batches,
    check_calibration_data,
    check_sample_budget,
    iterate_batches,
    one_shot_replay,
    peek_batch,
)
from keras_compress.callbacks import CompressionScheduleCallback, CompressionStatisticsCallback
from keras_compress.config import CompressionConfig, load_config
from keras_compress.export.strip import strip_model
from keras_compress.graph import as_functional, is_functional_subclass, is_graph_model, iter_layers
from keras_compress.recording import containers_of
from keras_compress.selection import check_scopes, resolve_torch_scopes
from keras_compress.statistics import CompressionStatistics
from keras_compress.transform import transform_model
from keras_compress.wrapper import PROGRESS_VARIABLES, WeightsWrapper

__all__ = ["CompressionController", "compress"]

logger = logging.getLogger("keras_compress")

def _bind(model, cfg, dataset):
    """The controller of an already-compressed `model`, for the config it was compressed with."""
    present = compressed_with(model)
    asked = cfg.algorithm_names()
    if sorted(present) != sorted(asked):
        raise ValueError(
            "`kc.compress` continues an already-compressed model only with the config it was "
            "compressed with (the same algorithms). Received: model "
            f"{model.name!r} compressed with {', '.join(present)} and a config asking for "
            f"{', '.join(asked) or 'no algorithm'}. To add or remove an algorithm, compress the "
            "original, uncompressed model with the whole config."
        )
    cfg = resolve_torch_scopes(model, cfg)
    check_scopes(model, cfg)
    if dataset is not None:
        logger.info(
            "kc.compress: model %r is already compressed; its ranges and masks are kept and "
            "`dataset` is not used.", model.name,
        )
    controller = CompressionController(model, cfg, build_algorithms(cfg), resume=True)
    logger.info(
        "kc.compress: model %r is already compressed with %s; continuing from epoch %d, step %d.",
        model.name, ", ".join(present), controller.progress()["epochs"], controller.progress()["steps"],
    )
    return controller


def compress(
    model: keras.Model,
    config: str | os.PathLike | dict | CompressionConfig,
    dataset: Any = None,
    verbose: int | str = "auto",
) -> tuple[keras.Model, CompressionController]:
    """Compresses a Keras model as the config says.

    Clones the model (Sequential, Functional, nested), wraps the layers each algorithm
    selects, inserts activation quantizers, copies the weights, and runs the initializers
    that need data (quantizer range init, BatchNorm adaptation).

    Args:
        model: a Sequential, Functional or subclassed `keras.Model`. It is not modified: a
            subclassed model is copied with `type(model).from_config(model.get_config())`.
        config: the name of a packaged config (`"int8"`, see `kc.list_configs()`), a path to an
            NNCF-style JSON file, a dict, a JSON string or a `CompressionConfig`.
        dataset: calibration data: a `tf.data.Dataset`, an `(x, y)` tuple of arrays, an array
            of inputs, or an iterable of batches (a generator, a Python list of `(x, y)` batches).
            Needed for range init and BN adaptation. An infinite `tf.data.Dataset` is read for the
            samples the config asks for (at most `calibration.INFINITE_DATA_LIMIT`).
        verbose: as Keras' `verbose`: 0 prints nothing, 1 (or "auto") shows a progress bar for
            each pass over the calibration data (BatchNorm adaptation, range init), 2 one line
            per pass. A bar ends at the samples actually read when the data is shorter.

    Returns:
        `(compressed_model, controller)`: a `keras.Model` to compile and fit as usual (a
        `CompressedModel` for a subclassed model), and the `CompressionController` that gives its
        callbacks, statistics and `strip()`.

    Raises:
        ConfigError: for a bad config, and for an exact layer name in any key that names layers
            (`ignored_scopes`, `target_scopes`, `scope_overrides`, `bitwidth_per_scope`,
            `unified_scale_ops`, ...) that is not a layer of the model.
        ValueError: for calibration data that is empty, does not fit the model's inputs (the
            message names the input and both shapes), is not numeric or holds NaN/Inf; for a
            Sequential model without an input shape; for a subclassed model that cannot be copied
            from its config, or with filter pruning (which needs a graph).
        TypeError: when `model` is not a `keras.Model`.

    A model in which no layer can be compressed is returned as a working clone, with a logged
    warning; Lambda and unsupported layers are left as they are and listed in
    `ctrl.statistics().skipped()`.

    A model that is already compressed (for example one loaded from a `.keras` file) is not
    cloned or initialized again: it is returned itself, with a controller bound to it whose
    schedules continue from the epoch and step saved in the model. The config must name the
    algorithms the model was compressed with (`ValueError` otherwise: compress the original model
    with the whole config to add or remove one).

    Example:
        ```python
        compressed, ctrl = kc.compress(model, "int8", dataset=(x_train, y_train), verbose=0)
        compressed.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        compressed.fit(x_train, y_train, callbacks=ctrl.callbacks())
        compressed.save("model.keras")
        # later, in another process: the same model and a controller that continues its schedules
        loaded, ctrl = kc.compress(keras.saving.load_model("model.keras"), "configs/int8.json")
        ```
    """
    verbose = _check_verbose(verbose)
    cfg = load_config(config)
    if isinstance(model, keras.Model) and compressed_with(model):
        return model, _bind(model, cfg, dataset)
    subclassed = isinstance(model, keras.Model) and not is_graph_model(model)
    input_shape = tuple(cfg.input_info[0].sample_size[1:]) if cfg.input_info else None
    if subclassed or is_functional_subclass(model):
        original = model  # its class is kept: a copy of it is compressed
    else:
        original = as_functional(model, input_shape)
    # Bad input fails here, before anything is cloned or run.
    if dataset is not None:
        dataset = as_batches(original, dataset)
        check_calibration_data(original, dataset)
    cfg = resolve_torch_scopes(original, cfg)
    check_scopes(original, cfg)
    algorithms = build_algorithms(cfg)

    def wrap_fn(original_layer, fresh, path):
        layer = fresh
        for algorithm in algorithms:
            layer = algorithm.wrap(original_layer, layer, path)
        return layer

    if subclassed:
        _check_graph_free(algorithms, model)
    sample = None
    # The input signature, a recording, the shapes a graph-model subclass is rebuilt on when loaded.
    if dataset is not None and (subclassed or containers_of(original) or is_functional_subclass(original)):
        sample, dataset = peek_batch(dataset)
        if sample is not None:
            sample = keras.tree.map_structure(lambda x: x[:8], sample)
    compressed = transform_model(original, wrap_fn, algorithms, sample=sample, input_shape=input_shape)
    controller = CompressionController(compressed, cfg, algorithms, original_model=original)
    layers = list(iter_layers(compressed))
    if algorithms and not any(isinstance(layer, WeightsWrapper) for layer in layers):
        skipped = controller.statistics().skipped()
        others = any(isinstance(layer, CompressionLayer) for layer in layers)
        logger.warning(
            "kc.compress found no layer to compress in model %r: no layer has weights that %s. The "
            "returned model computes what the original does%s.%s",
            model.name,
            "; ".join(f"{a.name} compresses ({a.compresses})" for a in algorithms),
            " (plus the activation quantizers it holds)" if others else "",
            f" Left as they are: {skipped}" if skipped else "",
        )
    if dataset is not None:
        controller.initialize(dataset, verbose=verbose)
    elif controller.needs_data():
        logger.warning(
            "kc.compress got no `dataset`: quantizer range init and BatchNorm adaptation are "
            "skipped. Pass calibration data for accurate initialization."
        )
    return compressed, controller


def _check_verbose(verbose):
    if verbose == "auto":
        return 1
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f'`verbose` must be 0, 1, 2 or "auto". Received: verbose={verbose!r}')
    return verbose


def _check_graph_free(algorithms, model):
    """Raises for algorithms that need a graph (filter pruning), which a subclassed model lacks."""
    needing = [a.name for a in algorithms if a.needs_graph]
    if needing:
        raise ValueError(
            f"{', '.join(needing)} needs the model's graph: filters can only be removed together with "
            "the channels of every layer that reads them, and in a subclassed model the operations in "
            f"`call()` that join channels (`x + y`, concatenations) are not visible. Received: "
            f"{type(model).__name__} {model.name!r}, a subclassed model. Build the same network with the "
            "Functional API (the same layers called on `keras.Input`) and load its weights to prune it; "
            "quantization, sparsity and mixed precision work on the subclassed model as it is."
        )


class CompressionController:
    """Drives and reports the compression of one model.

    Args:
        model: the compressed model built by `kc.compress`.
        config: the `CompressionConfig`.
        algorithms: the algorithm objects (`CompressionAlgorithm`).
        original_model: the uncompressed (Functional) model.
        resume: True for a model that was compressed before (loaded): the algorithms take up its
            state (`restore`) instead of starting their schedules (`on_compress`).

    The training progress (epochs and optimizer steps begun under this controller) lives in
    variables of the model's wrappers, so it is saved with the model: schedules follow it, not
    `fit`'s epoch or the optimizer's step count, and continue across `fit` calls, a new
    `compile()` with a new optimizer, `model.save` / `load_model` and weight checkpoints.
    """

    def __init__(
        self,
        model: keras.Model,
        config: CompressionConfig,
        algorithms: list[CompressionAlgorithm],
        original_model: keras.Model | None = None,
        resume: bool = False,
    ):
        self.model = model
        self.config = config
        self.algorithms = algorithms
        self.original_model = original_model
        self.accuracy_aware_history = []
        self._wrappers = [layer for layer in iter_layers(model) if isinstance(layer, WeightsWrapper)]
        # The wrappers of a stripped (inference) model hold no progress counters.
        self._holders = [wrapper for wrapper in self._wrappers if wrapper.tracks_progress]
        self._counters = dict.fromkeys(PROGRESS_VARIABLES, 0)
        if resume:
            for name in PROGRESS_VARIABLES:
                saved = [_read_counter(wrapper, name) for wrapper in self._holders]
                self._set_counter(name, max(saved, default=0), everywhere=True)
            last_epoch = max(self._counter("compression_epoch") - 1, 0)
            for algorithm in self.algorithms:
                algorithm.restore(self.model, last_epoch)
        else:
            for algorithm in self.algorithms:
                algorithm.on_compress(self.model)

    # ----------------------------------------------------------------- progress
    def _counter(self, name):
        if self._holders:
            return _read_counter(self._holders[0], name)
        return self._counters[name]

    def _set_counter(self, name, value, everywhere=False):
        self._counters[name] = int(value)
        for wrapper in self._holders if everywhere else self._holders[:1]:
            getattr(wrapper, name).assign(float(value))

    def progress(self) -> dict:
        """`{"epochs": n, "steps": n}`: the epochs and optimizer steps begun under this controller
        (saved in the model, so a loaded model's controller continues from them)."""
        return {"epochs": self._counter("compression_epoch"), "steps": self._counter("compression_step")}

    # ----------------------------------------------------------------- schedule
    def on_train_begin(self, steps_per_epoch: int | None = None) -> None:
        """Called by the schedule callback when `fit` starts (with `fit`'s steps per epoch).

        A custom training loop calls it once before training.
        """
        for wrapper in self._wrappers:
            wrapper.driven = True
        for algorithm in self.algorithms:
            if steps_per_epoch:
                algorithm.set_steps_per_epoch(steps_per_epoch)
            algorithm.on_train_begin(self.model)

    def on_train_end(self, step: int | None = None) -> None:
        """Called by the schedule callback when `fit` ends.

        Args:
            step: optional optimizer step count: the step counter becomes at least that (with
                `steps_per_execution`, callbacks see one batch of several steps).
        """
        for wrapper in self._wrappers:
            wrapper.driven = False
        steps = max(self._counter("compression_step"), int(step or 0))
        self._set_counter("compression_step", steps, everywhere=True)  # every wrapper holds the progress
        self._set_counter("compression_epoch", self._counter("compression_epoch"), everywhere=True)

    def on_epoch_end(self) -> None:
        """Called by the schedule callback at the end of every epoch (a custom loop calls it after the
        epoch's last step): algorithms bring what the last step moved back to their level."""
        for algorithm in self.algorithms:
            algorithm.on_epoch_end(self.model)

    def on_epoch_begin(self, epoch: int | None = None) -> None:
        """Advances per-epoch schedules to the next epoch.

        Args:
            epoch: `fit`'s 0-based epoch. The schedule takes the larger of it and the epochs
                already begun under this controller, so a second `fit` (or a loaded model's)
                continues the schedule instead of restarting it.
        """
        begun = self._counter("compression_epoch")
        epoch = begun if epoch is None else max(int(epoch), begun)
        self._set_counter("compression_epoch", epoch + 1, everywhere=True)
        self._set_counter("compression_step", self._counter("compression_step"), everywhere=True)
        for algorithm in self.algorithms:
            algorithm.on_epoch_begin(self.model, epoch)

    def on_train_batch_begin(self, step: int | None = None) -> None:
        """Advances per-step schedules to the next global step.

        Args:
            step: optional global step (a custom loop may pass `optimizer.iterations`); the
                schedule takes the larger of it and the steps already begun under this controller,
                so a new optimizer (a new `compile()`) does not restart the schedule.
        """
        begun = self._counter("compression_step")
        step = begun if step is None else max(int(step), begun)
        self._set_counter("compression_step", step + 1)
        for algorithm in self.algorithms:
            algorithm.on_train_batch_begin(self.model, step)

    def algorithm(self, name: str) -> CompressionAlgorithm | None:
        """The algorithm object called `name` ("quantization", ...), or None."""
        return next((a for a in self.algorithms if a.name == name), None)

    # ----------------------------------------------------------------- initialization
    def _bn_adaptation_samples(self):
        return self.config.batchnorm_adaptation_samples()

    def needs_data(self) -> bool:
        """Whether initialization wants calibration data (range init or BN adaptation)."""
        return self._bn_adaptation_samples() > 0 or any(a.calibration_samples(self.model) > 0 for a in self.algorithms)

    def initialize(self, dataset: Any, verbose: int = 1) -> None:
        """Runs the data-driven initializers on `dataset`.

        Order: every algorithm's `initialize_weights` (weight ranges, mixed precision); BatchNorm
        adaptation, with the algorithms' `passthrough_layers` passing their inputs through; then
        every algorithm's `initialize` (activation ranges).

        Args:
            dataset: calibration data (see `kc.compress`).
            verbose: 0 silent, 1 a progress bar per pass over the data, 2 one line per pass.
        """
        num_bn = self._bn_adaptation_samples()
        needed = [num_bn] + [a.calibration_samples(self.model) for a in self.algorithms]
        keys = [f"{a.name}: {n}" for a, n in zip(self.algorithms, needed[1:]) if n > 0]
        keys += [f"batchnorm_adaptation: {num_bn}"] if num_bn > 0 else []
        notice = check_sample_budget(dataset, max(needed), ", ".join(keys))
        if notice and verbose:
            logger.info(notice)
        # Each initializer reads the data from the start: a generator is read once, up to what they use.
        dataset = one_shot_replay(dataset, max(needed))
        for algorithm in self.algorithms:
            algorithm.initialize_weights(self.model, iterate_batches(dataset), self.original_model)
        if num_bn > 0:
            passthrough = [layer for a in self.algorithms for layer in a.passthrough_layers(self.model)]
            for layer in passthrough:
                layer.enabled = False
            try:
                if verbose:
                    logger.info("BatchNorm adaptation on %d samples", num_bn)
                seen = adapt_batchnorm(self.model, iterate_batches(dataset), num_bn, verbose=verbose)
                if verbose and 0 < seen < num_bn:
                    logger.info("BatchNorm adaptation read all the data: %d of the %d samples asked for", seen, num_bn)
                if seen == 0 and batchnorm_layers(self.model):
                    raise ValueError(
                        "Calibration data must hold at least one batch for BatchNorm adaptation. "
                        "Received: `dataset` yielded no batches (it is empty, or an iterator that "
                        "was already read to the end)."
                    )
            finally:
                for layer in passthrough:
                    layer.enabled = True
        for algorithm in self.algorithms:
            algorithm.initialize(self.model, iterate_batches(dataset), verbose=verbose)

    # ----------------------------------------------------------------- training-time API
    def callbacks(self, log_dir: str | os.PathLike | None = None, validation_data: Any = None) -> list:
        """The Keras callbacks that drive compression inside `model.fit`.

        - the schedule driver (per epoch and per optimizer step);
        - the figures that move (levels, sparsity reached, FLOPs kept) into `logs` every epoch
          (progress bar, History, CSVLogger, TensorBoard), and every figure as TensorBoard
          scalars in `log_dir` when given;
        - with `accuracy_aware_training` in the config, the accuracy-bound callback.

        Keras calls callbacks in list order, so put these first:
        `fit(callbacks=ctrl.callbacks() + [CSVLogger(...), TensorBoard(...)])`. A logging callback
        placed before them writes the epoch's logs before the compression figures are added.

        Args:
            log_dir: optional TensorBoard log directory (default: the config's `log_dir`).
            validation_data: data to measure the uncompressed model's metric on, for
                accuracy-aware training without `uncompressed_model_accuracy` in the config.
        """
        log_dir = log_dir if log_dir is not None else self.config.log_dir
        callbacks = [CompressionScheduleCallback(self), CompressionStatisticsCallback(self, log_dir=log_dir)]
        if self.config.accuracy_aware_training is not None:
            callbacks.append(
                AccuracyAwareCallback(self, self.config.accuracy_aware_training, validation_data=validation_data)
            )
        return callbacks

    def statistics(self, model: keras.Model | None = None) -> CompressionStatistics:
        """Per-algorithm statistics of `model` (default: the compressed model)."""
        model = model or self.model
        return CompressionStatistics(
            {a.name: a.statistics(model) for a in self.algorithms},
            progress={a.name: a.progress_figures for a in self.algorithms},
        )

    def strip(self, model: keras.Model | None = None) -> keras.Model:
        """A plain inference copy of `model` (default: the compressed model), ready to export.

        Quantizers stay (they become OpenVINO FakeQuantize ops), half-range weight quantizers
        get NNCF's overflow fix, sparsity masks are folded into the weights and pruned filters
        are removed. The trained model is left as it is.
        """
        model = model or self.model
        compressed = any(isinstance(layer, CompressionLayer) for layer in iter_layers(model))
        if self.algorithms and not compressed:
            raise ValueError(
                f"`model` {model.name!r} has no keras_compress layers: pass the model returned "
                "by `kc.compress` (or a copy of it), not the original model."
            )
        return strip_model(model)


def _read_counter(wrapper, name):
    # convert_to_numpy, not int(): under tf.distribute the variable is a MirroredVariable.
    return int(round(float(keras.ops.convert_to_numpy(getattr(wrapper, name)))))
