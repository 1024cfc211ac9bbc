"""Keras callbacks that drive compression schedules and log compression figures."""

from __future__ import annotations

import os
from pathlib import Path

import keras

from keras_compress import backend

__all__ = ["CompressionScheduleCallback", "CompressionStatisticsCallback"]


def _check_trained_model(controller, model) -> None:
    """Raises `ValueError` unless `model` (the model `fit` trains) is the controller's model or contains it.

    A model contains the controller's model when it holds all of its variables: the callbacks drive the
    masks, levels and ranges of the controller's model, and training another one would leave them as they
    are without a word.
    """
    compressed = getattr(controller, "model", None)
    if model is None or compressed is None or model is compressed:
        return
    held = {id(variable) for variable in model.weights}
    if all(id(variable) in held for variable in compressed.weights):
        return
    raise ValueError(
        f"The callbacks of `ctrl.callbacks()` must be passed to `fit` of the model their controller compresses, "
        f"{compressed.name!r}, or of a model that contains it. Received: `fit` of model {model.name!r}, which does "
        "not hold that model's weights. Pass the callbacks of the trained model's own controller (`kc.compress` "
        "returns it; `kc.compress(loaded_model, config)` gives a loaded model its controller)."
    )


class CompressionScheduleCallback(keras.callbacks.Callback):
    """Drives the compression schedules from `model.fit`.

    Per-epoch schedules advance in `on_epoch_begin`; per-step schedules in
    `on_train_batch_begin`, with the controller's own epoch and step counters (saved in the
    model), so a resumed, repeated or recompiled fit continues the schedule where it stopped.

    Args:
        controller: the `CompressionController`.
    """

    def __init__(self, controller):
        super().__init__()
        self.controller = controller
        self._deferred = False
        self._epoch_start_step = self._last_batch = None

    def on_train_begin(self, logs=None):
        _check_trained_model(self.controller, self.model)
        self.controller.on_train_begin(self.params.get("steps") if self.params else None)
        # With no schedule that moves per step, the step counter is brought up to date once per epoch
        # instead of every step. On JAX, `fit` keeps the variables in its own state during an epoch:
        # a callback that reads or assigns them must first copy that state back (Keras does it when a
        # callback reads `self.model`), which cost 20-50% of a digits CNN's train step; on TensorFlow
        # the eager reads and the assign cost 7 ms a step (measured under load).
        self._deferred = not any(algorithm.per_step for algorithm in self.controller.algorithms)

    def on_train_end(self, logs=None):
        self._catch_up()
        self.controller.on_train_end(self._optimizer_step())

    def on_epoch_begin(self, epoch, logs=None):
        self.controller.on_epoch_begin(epoch)
        self._epoch_start_step, self._last_batch = self.controller.progress()["steps"], None

    def on_epoch_end(self, epoch, logs=None):
        self._catch_up()
        self.controller.on_epoch_end()

    def on_train_batch_begin(self, batch, logs=None):
        if self._deferred:
            return
        # The optimizer's step is a lower bound (it runs ahead of this callback with
        # `steps_per_execution`); a new optimizer restarts it at 0, and the controller's own step
        # counter wins. convert_to_numpy, not int(): under tf.distribute it is a MirroredVariable.
        self.controller.on_train_batch_begin(self._optimizer_step())

    def on_train_batch_end(self, batch, logs=None):
        self._last_batch = batch  # the epoch's last step so far (with `steps_per_execution`, the batch's last)
        steps = self.params.get("steps") if self.params else None
        if steps is not None and batch + 1 >= steps and not backend.fit_detaches_variables():
            # The epoch's last step: caught up now, so that every callback's `on_epoch_end` (a user's
            # checkpoint, the accuracy-aware snapshot) sees the same counter, whatever their order.
            # Not on JAX: there `fit` writes its own state back after this step, over what this assigns.
            self._catch_up()

    def _catch_up(self):
        """In deferred mode, moves the controller's step counter past the steps of this epoch."""
        if self._deferred and self._last_batch is not None:
            self.controller.on_train_batch_begin(self._epoch_start_step + self._last_batch)
            self._last_batch = None

    def _optimizer_step(self):
        optimizer = getattr(self.model, "optimizer", None)
        return int(keras.ops.convert_to_numpy(optimizer.iterations)) if optimizer is not None else None


class CompressionStatisticsCallback(keras.callbacks.Callback):
    """Puts the compression figures into `logs` at the end of every epoch, and into TensorBoard.

    `logs` gets the figures that move during training (`CompressionStatistics.progress_figures`:
    the levels the schedules ask for and what the model has reached), as
    `compression/<algorithm>/<figure>`, so the progress bar, History, CSVLogger and Keras'
    TensorBoard callback show them. Keras calls callbacks in list order: put `ctrl.callbacks()`
    before CSVLogger and TensorBoard in `fit(callbacks=...)`, or those see the epoch's logs before
    the figures are in them. With `log_dir`, every figure (`CompressionStatistics.figures`) is
    also written as a TensorBoard scalar, whatever the order; the writer is closed when `fit` ends.

    Args:
        controller: the `CompressionController`.
        log_dir: optional TensorBoard log directory for every figure.
    """

    def __init__(self, controller, log_dir=None):
        super().__init__()
        self.controller = controller
        self.log_dir = log_dir
        self._writer = None
        if log_dir:
            _check_log_dir(log_dir)
            try:
                import tensorboard  # noqa: F401
            except ImportError as err:
                raise ImportError(
                    "`log_dir` writes TensorBoard scalars and needs the tensorboard package: "
                    "pip install tensorboard"
                ) from err

    def on_train_begin(self, logs=None):
        _check_trained_model(self.controller, self.model)

    def on_epoch_end(self, epoch, logs=None):
        statistics = self.controller.statistics()
        if logs is not None:
            for key, value in statistics.progress_figures().items():
                logs[f"compression/{key}"] = float(value)
        if self.log_dir:
            if self._writer is None:
                self._writer = backend.scalar_writer(self.log_dir)
            self._writer.write({f"compression/{key}": value for key, value in statistics.figures().items()}, epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _check_log_dir(log_dir) -> None:
    """Raises, when the callbacks are made, for a `log_dir` that cannot become a folder (TensorFlow would fail
    only when it writes, at the end of the first epoch)."""
    if not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(f"`log_dir` must be a folder path (str or os.PathLike). Received: log_dir={log_dir!r}")
    path = Path(log_dir)
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                where = "" if folder == path else f", whose {str(folder)!r} is a file, not a folder"
                raise NotADirectoryError(
                    f"`log_dir` must be a folder path (it is created when missing). Received: "
                    f"log_dir={os.fspath(log_dir)!r}{where or ', which is an existing file'}"
                )
            return
