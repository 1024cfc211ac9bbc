"""Accuracy-aware training as a Keras callback: early exit and adaptive compression level.

The user sets the largest metric drop they accept (`accuracy_aware_training` in the config);
inside a plain `model.fit` the callback stops training once the compressed model is within the
bound (`early_exit`) or searches the highest compression level that stays within it
(`adaptive_compression_level`). At the end the model holds the best weights seen within the
bound, and the search is available as a table.
"""

from __future__ import annotations

import logging

import keras

from keras_compress.statistics import format_table

__all__ = ["AccuracyAwareCallback", "accuracy_bound"]

logger = logging.getLogger("keras_compress")


def accuracy_bound(reference, params):
    """The worst acceptable metric value given the uncompressed model's `reference`.

    Relative degradation is in percent of the reference.

    Example:
        >>> class P: maximal_relative_accuracy_degradation = 1.0; \\
        ...     maximal_absolute_accuracy_degradation = None; metric_mode = "max"
        >>> round(accuracy_bound(0.9, P), 4)
        0.891
    """
    sign = 1.0 if params.metric_mode == "max" else -1.0
    if params.maximal_absolute_accuracy_degradation is not None:
        return reference - sign * params.maximal_absolute_accuracy_degradation
    return reference - sign * abs(reference) * params.maximal_relative_accuracy_degradation / 100.0


class AccuracyAwareCallback(keras.callbacks.Callback):
    """Enforces the accuracy bound of `accuracy_aware_training` during `fit`.

    Args:
        controller: the `CompressionController` (its adaptive algorithm must have `set_level`).
        config: the `AccuracyAwareConfig`.
        reference: the uncompressed model's metric; default `params.uncompressed_model_accuracy`,
            else measured at `on_train_begin` by evaluating the original model on
            `validation_data`.
        validation_data: data to measure the reference on (`x`, `(x, y)` or a dataset).
    """

    def __init__(self, controller, config, reference=None, validation_data=None):
        super().__init__()
        self.controller = controller
        self.config = config
        self.params_ = config.params
        self.reference = reference if reference is not None else config.params.uncompressed_model_accuracy
        self.validation_data = validation_data
        self.history = []
        self.best = None  # (level, metric, weights, epoch)
        self.algorithm = None
        self.level = None
        self.step = config.params.initial_compression_rate_step
        self.bad_epochs = 0
        self.last_good_level = None

    # ----------------------------------------------------------------- helpers
    def _measure_reference(self):
        original = self.controller.original_model
        if original is None or self.validation_data is None:
            raise ValueError(
                "accuracy_aware_training needs the uncompressed model's metric: set "
                "`params.uncompressed_model_accuracy` in the config or pass "
                "`validation_data` to `ctrl.callbacks(validation_data=...)`."
            )
        reference = keras.models.clone_model(original)
        reference.set_weights(original.get_weights())
        reference.compile_from_config(self.model.get_compile_config())
        data = self.validation_data
        if isinstance(data, tuple):
            results = reference.evaluate(*data, verbose=0, return_dict=True)
        else:
            results = reference.evaluate(data, verbose=0, return_dict=True)
        key = self.params_.metric.removeprefix("val_")
        if key not in results:
            raise ValueError(
                f"`metric` {self.params_.metric!r} is not among the model's metrics "
                f"{sorted(results)}. Compile with it or set accuracy_aware_training.params.metric."
            )
        return float(results[key])

    def _within(self, value):
        return value >= self.bound if self.params_.metric_mode == "max" else value <= self.bound

    def _better(self, a, b):
        return a > b if self.params_.metric_mode == "max" else a < b

    def _levels(self):
        return {a.name: float(a.level) for a in self.controller.algorithms if a.level is not None}

    def _fully_compressed(self):
        for algorithm in self.controller.algorithms:
            target = algorithm.target_level()
            if target is not None and algorithm.level < target - 1e-6:
                return False
        return True

    # ----------------------------------------------------------------- Keras hooks
    def on_train_begin(self, logs=None):
        if self.reference is None:
            self.reference = self._measure_reference()
        self.bound = accuracy_bound(self.reference, self.params_)
        if self.config.mode == "adaptive_compression_level":
            candidates = [a for a in self.controller.algorithms if a.adaptive]
            if not candidates:  # the config's validation refuses such a config
                raise ValueError(
                    "adaptive_compression_level needs an algorithm whose level can be set (filter pruning, "
                    f"sparsity). Received: {', '.join(a.name for a in self.controller.algorithms) or 'none'}"
                )
            self.algorithm = candidates[0]
            self.max_level = self.algorithm.target_level()
            self.level = self.algorithm.level
            self.algorithm.set_level(self.model, self.level)
        logger.info(
            "accuracy-aware training: reference %s=%.4f, bound %.4f", self.params_.metric, self.reference, self.bound
        )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.params_.metric not in logs:
            raise ValueError(
                f"accuracy_aware_training metric {self.params_.metric!r} is not in the epoch logs "
                f"{sorted(logs)}. Pass validation_data to fit (for val_* metrics) or set "
                "accuracy_aware_training.params.metric."
            )
        value = float(logs[self.params_.metric])
        within = self._within(value)
        levels = self._levels()
        level = self.level if self.level is not None else max(levels.values(), default=0.0)
        self.history.append({"epoch": epoch, "level": level, "metric": value, "within_bound": within})
        logs["compression/accuracy_aware/within_bound"] = float(within)
        if within and self._is_best(level, value):
            self.best = (level, value, [w.copy() for w in self.model.get_weights()], epoch)

        if epoch + 1 >= self.params_.maximal_total_epochs:
            self.model.stop_training = True
            return
        if self.config.mode == "early_exit":
            if within and self._fully_compressed():
                self.model.stop_training = True
            return
        self._adapt(epoch, within)

    def _is_best(self, level, value):
        if self.best is None:
            return True
        best_level, best_value = self.best[0], self.best[1]
        if level > best_level + 1e-9:
            return True
        return abs(level - best_level) <= 1e-9 and self._better(value, best_value)

    def _adapt(self, epoch, within):
        p = self.params_
        if epoch + 1 < p.initial_training_phase_epochs:
            return
        if within:
            self.last_good_level = self.level
            self.bad_epochs = 0
            if self.level >= self.max_level - 1e-9:
                self.model.stop_training = True
                return
            self._set(min(self.level + self.step, self.max_level))
            return
        self.bad_epochs += 1
        if self.bad_epochs < p.patience_epochs:
            return
        # Back off: a smaller step above the last level that met the bound, a lower learning rate.
        self.bad_epochs = 0
        self.step *= p.compression_rate_step_reduction_factor
        if self.step < p.minimal_compression_rate_step:
            self.model.stop_training = True
            return
        if self.last_good_level is None:
            self._set(max(self.level - self.step, 0.0))
        else:
            self._set(min(self.last_good_level + self.step, self.max_level))
        lr = self.model.optimizer.learning_rate
        if isinstance(lr, keras.Variable):
            lr.assign(lr * p.lr_reduction_factor)

    def _set(self, level):
        self.level = float(level)
        self.algorithm.set_level(self.model, self.level)

    def on_train_end(self, logs=None):
        if self.best is not None:
            level, value, weights, epoch = self.best
            self.model.set_weights(weights)
            if self.algorithm is not None:
                self.algorithm.level = level
                self.level = level
            logger.info("accuracy-aware training: kept epoch %d (level %.4f, %s=%.4f)", epoch, level,
                        self.params_.metric, value)  # fmt: skip
        else:
            logger.warning(
                "accuracy-aware training: no epoch met the bound %.4f (%s); the model is the last one.",
                self.bound, self.params_.metric,
            )  # fmt: skip
        self.controller.accuracy_aware_history = list(self.history)
        logger.info("%s", self.table())

    def table(self):
        """The search as a text table (epoch, level, metric, within bound)."""
        rows = [[r["epoch"], f"{r['level']:.4f}", f"{r['metric']:.4f}", r["within_bound"]] for r in self.history]
        return format_table(["epoch", "level", self.params_.metric, "within bound"], rows)
