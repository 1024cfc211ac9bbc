"""Sparsity wrappers: a binary mask (magnitude), a learned stochastic mask (RB), learned
movement scores (movement sparsity). All fold their masks into the weights on `strip()`."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_compress.wrapper import WeightsWrapper, unwrap

__all__ = ["MaskedWeightsWrapper", "MagnitudeSparsityWrapper", "RBSparsityWrapper", "MovementSparsityWrapper"]


def _straight_through(hard, soft):
    """`hard` in the forward pass, the gradient of `soft` in the backward pass."""
    return soft + ops.stop_gradient(hard - soft)


class MaskedWeightsWrapper(WeightsWrapper):
    """Base of the sparsity wrappers: multiplies each sparsified weight by a mask.

    Subclasses create their variables in `build_wrapper` and define `mask(attr, training)`.
    `strip()` multiplies the weights by their inference masks and returns the wrapped layer.

    Args:
        layer: the layer (or wrapper) to wrap.
        weight_names: the weights to sparsify (default: all compressible weights of the layer).
        **kwargs: base layer arguments.
    """

    scheduled = True

    def __init__(self, layer, weight_names=None, **kwargs):
        super().__init__(layer, **kwargs)
        self.weight_names = list(weight_names or self.spec.weights)

    def transform_weights(self, weights, training=None):
        weights = dict(weights)
        for attr in self.weight_names:
            weights[attr] = weights[attr] * ops.cast(self.mask(attr, training), weights[attr].dtype)
        return weights

    def inference_masks(self):
        """{weight name: numpy 0/1 mask} as used in inference."""
        return {attr: ops.convert_to_numpy(self.mask(attr, training=False)) for attr in self.weight_names}

    def strip(self):
        base = unwrap(self)
        inner = self.layer.strip() if isinstance(self.layer, WeightsWrapper) else self.layer
        for attr, mask in self.inference_masks().items():
            var = getattr(base, attr)
            var.assign(var * mask)
        return inner

    def get_config(self):
        return {**super().get_config(), "weight_names": self.weight_names}


@keras.saving.register_keras_serializable(package="keras_compress")
class MagnitudeSparsityWrapper(MaskedWeightsWrapper):
    """Binary masks set from weight magnitudes by the magnitude-sparsity schedule.

    Example:
        >>> w = MagnitudeSparsityWrapper(keras.layers.Dense(4))
        >>> tuple(w(keras.ops.ones((2, 3))).shape)
        (2, 4)
    """

    def build_wrapper(self, input_shape):
        base = unwrap(self)
        self.masks = {
            attr: self.add_weight(
                name=f"{attr}_mask", shape=getattr(base, attr).shape, initializer="ones", trainable=False
            )
            for attr in self.weight_names
        }
        # The level the masks were computed for: saved with the weights, so a resumed fit
        # (BackupAndRestore, ModelCheckpoint) does not recompute masks it already has.
        self.mask_level = self.add_weight(
            name="mask_level", shape=(), initializer=keras.initializers.Constant(-1.0), trainable=False
        )

    def mask(self, attr, training=None):
        return self.masks[attr]


@keras.saving.register_keras_serializable(package="keras_compress")
class RBSparsityWrapper(MaskedWeightsWrapper):
    """Regularization-based sparsity: a trainable logit per weight.

    In training the mask is a stochastic binarization of `sigmoid(logit_scale * logit)` (kept
    with probability p, straight-through gradient); in inference it is `p > 0.5`. The wrapper
    adds the sparsity loss `loss_factor * share * (density - (1 - target))**2` to the model's
    losses (the density of `p > 0.5`, with the gradient of `mean(p)`), so a plain `model.fit`
    drives the density towards `1 - target`; `share` is this layer's share of all sparsified
    weights and `target` is set by the schedule.

    Args:
        layer: the layer to wrap.
        weight_names: weights to sparsify.
        logit_scale: multiplier of the logits (a learning-rate multiplier for the masks; NNCF's
            `compression_lr_multiplier`), so that optimizers tuned for the weights move masks
            in tens of steps rather than thousands.
        loss_factor: weight of the sparsity loss.
        **kwargs: base layer arguments.
    """

    def __init__(self, layer, weight_names=None, logit_scale=50.0, loss_factor=1.0, seed=None, **kwargs):
        super().__init__(layer, weight_names, **kwargs)
        self.logit_scale = float(logit_scale)
        self.loss_factor = float(loss_factor)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build_wrapper(self, input_shape):
        base = unwrap(self)
        initial = math.log(0.99 / 0.01) / self.logit_scale  # p = 0.99 at the start (NNCF)
        self.logits = {
            attr: self.add_weight(
                name=f"{attr}_mask_logit",
                shape=getattr(base, attr).shape,
                initializer=keras.initializers.Constant(initial),
                trainable=True,
            )
            for attr in self.weight_names
        }
        self.target = self.add_weight(name="target", shape=(), initializer="zeros", trainable=False)
        self.share = self.add_weight(name="share", shape=(), initializer="ones", trainable=False)

    def probability(self, attr):
        return ops.sigmoid(self.logits[attr] * self.logit_scale)

    def mask(self, attr, training=None):
        p = self.probability(attr)
        if not training:
            return ops.cast(p > 0.5, "float32")
        noise = keras.random.uniform(ops.shape(p), seed=self.seed_generator)
        return _straight_through(ops.cast(p > noise, "float32"), p)

    def training_loss(self):
        # The density that inference has (`p > 0.5`), with the gradient of the mean probability: a
        # loss on the mean probability alone settles where it is `1 - target` while the share of
        # masks below one half (what is exported, and reported) is off by a few points.
        densities = []
        for attr in self.weight_names:
            p = self.probability(attr)
            densities.append(_straight_through(ops.mean(ops.cast(p > 0.5, "float32")), ops.mean(p)))
        density = ops.mean(ops.stack(densities))
        return self.loss_factor * self.share * ops.square(density - (1.0 - self.target))

    def get_config(self):
        config = {"logit_scale": self.logit_scale, "loss_factor": self.loss_factor, "seed": self.seed}
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="keras_compress")
class MovementSparsityWrapper(MaskedWeightsWrapper):
    """Movement sparsity for Dense / EinsumDense: learned importance scores per weight or block.

    The mask keeps the weights whose score is above a threshold (set by the schedule), with a
    straight-through gradient, so a score grows when its weight moves away from zero
    (`dL/dscore = dL/dw' * w`). Blocks (`block_shape`) make the mask structured: one score per
    block of the kernel. The wrapper adds `regularization * mean(sigmoid(score))` to the
    losses, which pushes scores down unless the task needs the weight.

    Args:
        layer: a Dense or EinsumDense layer.
        weight_names: weights to sparsify (default the kernel).
        block_shape: None for per-weight scores, else the block size on each kernel axis.
        **kwargs: base layer arguments.
    """

    def __init__(self, layer, weight_names=None, block_shape=None, **kwargs):
        super().__init__(layer, weight_names, **kwargs)
        self.block_shape = list(block_shape) if block_shape else None

    def _score_shape(self, shape):
        if not self.block_shape:
            return tuple(shape)
        blocks = list(self.block_shape) + [1] * (len(shape) - len(self.block_shape))
        return tuple(int(math.ceil(s / b)) for s, b in zip(shape, blocks))

    def build_wrapper(self, input_shape):
        base = unwrap(self)
        self.scores = {
            attr: self.add_weight(
                name=f"{attr}_importance",
                shape=self._score_shape(getattr(base, attr).shape),
                initializer="zeros",
                trainable=True,
            )
            for attr in self.weight_names
        }
        self.threshold = self.add_weight(
            name="threshold", shape=(), initializer=keras.initializers.Constant(-1e9), trainable=False
        )
        self.regularization = self.add_weight(
            name="regularization", shape=(), initializer="zeros", trainable=False
        )
        # The threshold when warm-up started (NNCF's default `init_importance_threshold`), kept so
        # that a loaded model continues the threshold schedule.
        self.init_threshold = self.add_weight(
            name="init_threshold", shape=(), initializer="zeros", trainable=False
        )

    def _expand(self, values, shape):
        if not self.block_shape:
            return values
        for axis, size in enumerate(self.block_shape):
            values = ops.repeat(values, size, axis=axis)
        return values[tuple(slice(0, s) for s in shape)]

    def mask(self, attr, training=None):
        base = unwrap(self)
        shape = tuple(getattr(base, attr).shape)
        score = self.scores[attr]
        hard = ops.cast(score > self.threshold, "float32")
        block_mask = _straight_through(hard, score) if training else hard
        return self._expand(block_mask, shape)

    def training_loss(self):
        importance = ops.mean(ops.stack([ops.mean(ops.sigmoid(self.scores[a])) for a in self.weight_names]))
        return self.regularization * importance

    def get_config(self):
        return {**super().get_config(), "block_shape": self.block_shape}
