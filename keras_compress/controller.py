"""CompressionController: what `kc.compress` returns next to the compressed model."""

from __future__ import annotations

import logging

from keras_compress.quantization.range_init import iterate_batches, one_shot_replay
from keras_compress.statistics import CompressionStatistics

__all__ = ["CompressionController", "build_algorithms"]

logger = logging.getLogger("keras_compress")


def _algorithm_classes():
    from keras_compress.quantization.algorithm import QuantizationAlgorithm

    classes = {"quantization": QuantizationAlgorithm}
    try:
        from keras_compress.pruning.algorithm import FilterPruningAlgorithm

        classes["filter_pruning"] = FilterPruningAlgorithm
    except ImportError:
        pass
    try:
        from keras_compress.sparsity.algorithm import SPARSITY_ALGORITHMS

        classes.update(SPARSITY_ALGORITHMS)
    except ImportError:
        pass
    return classes


def build_algorithms(config):
    """The algorithm objects for the config's `compression` sections.

    Weight-masking algorithms (pruning, sparsity) come first and quantization last, whatever
    the config order, so quantizers see the masked weights (wrappers nest in that order).

    An algorithm object has `name`, `wrap(original, layer, path)`, `statistics(model)` and may
    have `plan`/`make_layer` (inserted layers), `on_train_begin(model)`,
    `on_epoch_begin(model, epoch)`, `on_train_batch_begin(model, step)` (schedules),
    `strip(model) -> model` (model-level export transform), `get_state()`/`set_state(state)`.
    """
    classes = _algorithm_classes()
    algorithms = []
    for section in config.compression:
        cls = classes.get(section.algorithm)
        if cls is None:
            raise ValueError(
                f"The {section.algorithm!r} algorithm is not available in this version of "
                f"keras_compress. Available: {sorted(classes)}"
            )
        algorithms.append(cls(section, config.target_device))
    return sorted(algorithms, key=lambda a: a.name == "quantization")


class CompressionController:
    """Drives and reports the compression of one model.

    Args:
        model: the compressed model built by `kc.compress`.
        config: the `CompressionConfig`.
        algorithms: the algorithm objects.
        pairs: `(original_layer, new_layer, path)` for every cloned layer.
    """

    def __init__(self, model, config, algorithms, pairs=(), original_model=None):
        self.model = model
        self.config = config
        self.algorithms = algorithms
        self.pairs = list(pairs)
        self.original_model = original_model
        self.accuracy_aware_history = []
        self._hook("on_compress")

    def _hook(self, hook, *args):
        for algorithm in self.algorithms:
            method = getattr(algorithm, hook, None)
            if method is not None:
                method(self.model, *args)

    def on_train_begin(self, steps_per_epoch=None):
        """Called by the schedule callback when `fit` starts (with `fit`'s steps per epoch)."""
        for algorithm in self.algorithms:
            if steps_per_epoch and hasattr(algorithm, "set_steps_per_epoch"):
                algorithm.set_steps_per_epoch(steps_per_epoch)
        self._hook("on_train_begin")

    def on_epoch_begin(self, epoch):
        """Advances per-epoch schedules to `epoch` (0-based)."""
        self._hook("on_epoch_begin", epoch)

    def on_train_batch_begin(self, step):
        """Advances per-step schedules to the global optimizer step `step`."""
        self._hook("on_train_batch_begin", step)

    def algorithm(self, name):
        """The algorithm object called `name` ("quantization", ...), or None."""
        return next((a for a in self.algorithms if a.name == name), None)

    # ----------------------------------------------------------------- initialization
    def _bn_adaptation_samples(self):
        return max(
            (s.initializer.batchnorm_adaptation.num_bn_adaptation_samples for s in self.config.compression),
            default=0,
        )

    def needs_data(self):
        """Whether initialization wants calibration data (range init or BN adaptation)."""
        quantization = self.algorithm("quantization")
        return bool(
            (quantization is not None and quantization.activation_quantizers(self.model))
            or self._bn_adaptation_samples() > 0
        )

    def initialize(self, dataset, verbose=1):
        """Runs the data-driven initializers on `dataset`.

        Order: weight ranges from the weights; BatchNorm adaptation (activation quantizers
        pass through, weights quantized), then activation range init.
        """
        from keras_compress.quantization.bn_adaptation import adapt_batchnorm, batchnorm_layers

        quantization = self.algorithm("quantization")
        needed = [self._bn_adaptation_samples()]
        if quantization is not None:
            needed += [quantization.num_init_samples(), getattr(quantization.precision, "num_data_points", 0)]
        # Each initializer reads the data from the start: a generator is read once, up to what they use.
        dataset = one_shot_replay(dataset, max(needed))
        if quantization is not None:
            if self.original_model is not None:
                quantization.initialize_precision(
                    self.model, self.pairs, self.original_model, iterate_batches(dataset)
                )
            quantization.initialize_weights(self.model)
        num_bn = self._bn_adaptation_samples()
        if num_bn > 0:
            quantizers = quantization.activation_quantizers(self.model) if quantization else []
            for layer in quantizers:
                layer.enabled = False
            try:
                if verbose:
                    logger.info("BatchNorm adaptation on %d samples", num_bn)
                seen = adapt_batchnorm(self.model, iterate_batches(dataset), num_bn, verbose=verbose)
                if seen == 0 and batchnorm_layers(self.model):
                    raise ValueError(
                        "Calibration data must hold at least one batch for BatchNorm adaptation. "
                        "Received: `dataset` yielded no batches (it is empty, or an iterator that "
                        "was already read to the end)."
                    )
            finally:
                for layer in quantizers:
                    layer.enabled = True
        if quantization is not None:
            quantization.initialize_activations(self.model, iterate_batches(dataset), verbose=verbose)

    # ----------------------------------------------------------------- training-time API
    def callbacks(self, log_dir=None, validation_data=None):
        """The Keras callbacks that drive compression inside `model.fit`.

        - the schedule driver (per epoch and per optimizer step);
        - compression figures into `logs` every epoch (progress bar, History, CSVLogger,
          TensorBoard), and as TensorBoard scalars in `log_dir` when given;
        - with `accuracy_aware_training` in the config, the accuracy-bound callback.

        Args:
            log_dir: optional TensorBoard log directory.
            validation_data: data to measure the uncompressed model's metric on, for
                accuracy-aware training without `uncompressed_model_accuracy` in the config.
        """
        from keras_compress.callbacks import CompressionScheduleCallback, CompressionStatisticsCallback

        callbacks = [CompressionScheduleCallback(self), CompressionStatisticsCallback(self, log_dir=log_dir)]
        if self.config.accuracy_aware_training is not None:
            from keras_compress.accuracy_aware import AccuracyAwareCallback

            callbacks.append(
                AccuracyAwareCallback(self, self.config.accuracy_aware_training, validation_data=validation_data)
            )
        return callbacks

    def statistics(self, model=None):
        """Per-algorithm statistics of `model` (default: the compressed model)."""
        model = model or self.model
        return CompressionStatistics({a.name: a.statistics(model) for a in self.algorithms})

    def strip(self, model=None):
        """A plain inference copy of `model` (default: the compressed model), ready to export.

        Quantizers stay (they become OpenVINO FakeQuantize ops), half-range weight quantizers
        get NNCF's overflow fix, sparsity masks are folded into the weights and pruned filters
        are removed. The trained model is left as it is.
        """
        from keras_compress.export.strip import strip_model
        from keras_compress.graph import iter_layers
        from keras_compress.quantization.fake_quantize import FakeQuantize
        from keras_compress.wrapper import WeightsWrapper

        model = model or self.model
        compressed = any(isinstance(l, (WeightsWrapper, FakeQuantize)) for l in iter_layers(model))
        if self.algorithms and not compressed:
            raise ValueError(
                f"`model` {model.name!r} has no keras_compress layers: pass the model returned "
                "by `kc.compress` (or a copy of it), not the original model."
            )
        return strip_model(model, self.algorithms)
