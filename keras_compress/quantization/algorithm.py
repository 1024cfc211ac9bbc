"""Quantization-aware training: which layers get which quantizers, initialization, statistics."""

from __future__ import annotations

import dataclasses
import logging
import types

import keras
import numpy as np

from keras_compress.algorithm import CompressionAlgorithm
from keras_compress.calibration import run_batches
from keras_compress.compressible import compressible_spec, weight_channel_axes
from keras_compress.config.scopes import split_precision_scope
from keras_compress.graph import iter_layers, layers_by_path
from keras_compress.quantization.fake_quantize import FakeQuantize
from keras_compress.quantization.placement import AGNOSTIC_ROLES, plan_activation_quantizers
from keras_compress.quantization.precision import (
    assign_bitwidths,
    hutchinson_traces,
    loss_perturbations,
    quantization_error,
)
from keras_compress.quantization.quantize_wrapper import QuantizeWrapper
from keras_compress.quantization.quantizers import QuantizerSpec
from keras_compress.quantization.range_init import RangeCollector
from keras_compress.selection import LayerSelection, in_scope, matches_scope

__all__ = ["QuantizationAlgorithm"]

logger = logging.getLogger("keras_compress")

#: Kinds of compressible layers whose weights are quantized (embeddings are not).
WEIGHT_KINDS = (
    "conv", "depthwise", "separable", "conv_transpose", "dense", "einsum_dense", "reversible_embedding", "custom",
)  # fmt: skip


class QuantizationAlgorithm(CompressionAlgorithm):
    """Uniform fake quantization of weights and activations (config `"algorithm": "quantization"`).

    Args:
        config: the `QuantizationConfig` section.
        target_device: the config's `target_device` (the overflow fix applies to CPU and ANY).
    """

    name = "quantization"
    layer_types = (QuantizeWrapper, FakeQuantize)

    def __init__(self, config, target_device="ANY"):
        super().__init__(config, target_device)
        self.selection = LayerSelection(
            WEIGHT_KINDS, lambda names: self._in_scope(names, config.weights), "{kind} weights are not quantized"
        )
        self.first_layer_ids = set()
        self.precision = config.initializer.precision
        self.precision_rows = []  # [layer, parameters, sensitivity, bits] after mixed precision
        self.manual_used = set()  # indices of the `bitwidth_per_scope` entries that set some quantizer's bits
        self.precision_budget = None
        self.float_operations = {}  # keras.ops class name -> paths of the operations left in float
        if config.activations.per_channel:
            logger.warning(
                "quantization.activations.per_channel is not supported: activations are "
                "quantized per tensor (what OpenVINO runs in INT8)."
            )

    # ----------------------------------------------------------------- selection
    def _names(self, layer, path):
        return [layer.name, f"{path}{layer.name}"]

    def _in_scope(self, names, group):
        cfg = self.config
        return in_scope(
            names, [*cfg.target_scopes, *group.target_scopes], [*cfg.ignored_scopes, *group.ignored_scopes]
        )

    @property
    def skipped(self):
        """`{layer path: reason}` of the layers whose weights are not quantized."""
        return self.selection.skipped

    def selects_weights(self, layer, path=""):
        """Whether `layer`'s weights get quantized; records the reason when they do not."""
        return self.selection.selects(layer, path)

    def _settings(self, group, names):
        """The group's quantizer settings with the first matching `scope_overrides` entry applied."""
        cfg = getattr(self.config, group)
        settings = {k: getattr(cfg, k) for k in ("mode", "bits", "signed", "per_channel")}
        for scope, override in self.config.scope_overrides.get(group, {}).items():
            if matches_scope(names, [scope]):
                settings.update(
                    {k: v for k, v in override.model_dump(include=set(settings)).items() if v is not None}
                )
                break
        return types.SimpleNamespace(**settings)

    def _manual_bits(self, names, group="weights"):
        """The bits `bitwidth_per_scope` gives a quantizer of `group` ("weights": a layer's weights,
        "activations": the quantizer on a layer's output), or None."""
        if self.precision is None or self.precision.type != "manual":
            return None
        for index, (bits, scope) in enumerate(self.precision.bitwidth_per_scope):
            name, scope_group = split_precision_scope(scope)
            if scope_group == group and matches_scope(names, [name]):
                self.manual_used.add(index)
                return bits
        return None

    def on_compress(self, model):
        """Warns about `bitwidth_per_scope` entries that set the bits of no quantizer."""
        if self.precision is None or self.precision.type != "manual":
            return
        unused = [f"[{bits}, {scope!r}]" for index, (bits, scope) in enumerate(self.precision.bitwidth_per_scope)
                  if index not in self.manual_used]  # fmt: skip
        if unused:
            logger.warning(
                "quantization.initializer.precision.bitwidth_per_scope: %d entr%s set the bits of no quantizer of "
                "model %r: %s. An entry names a layer whose weights are quantized, or with `|OUTPUT` a layer "
                "(or input) whose output has an activation quantizer: see `ctrl.statistics()` for the quantizers.",
                len(unused), "y" if len(unused) == 1 else "ies", model.name, ", ".join(unused),
            )

    def _weight_settings(self, layer, path=""):
        """The weight quantizer settings of `layer` as `QuantizerSpec` arguments, without `axis`."""
        cfg = self._settings("weights", self._names(layer, path))
        manual = self._manual_bits(self._names(layer, path))
        if manual is not None:
            cfg.bits = manual
        half = (
            self.config.overflow_fix == "enable"
            or (self.config.overflow_fix == "first_layer_only" and id(layer) in self.first_layer_ids)
        ) and cfg.bits == 8 and self.target_device in ("ANY", "CPU")
        return {
            "mode": cfg.mode,
            "bits": cfg.bits,
            "signed": True if cfg.signed is None else cfg.signed,
            "per_channel": cfg.per_channel,
            "narrow_range": cfg.mode == "symmetric",
            "half_range": half,
        }

    def _weight_spec(self, layer, attr, path=""):
        settings = self._weight_settings(layer, path)
        axis = weight_channel_axes(layer, attr) if settings["per_channel"] else None
        if isinstance(axis, tuple) and settings["mode"] != "symmetric":
            # TensorFlow's per-channel fake-quant op takes one axis, and OpenVINO did not compile
            # an EinsumDense kernel quantized per channel on one of its output axes: per tensor.
            settings["per_channel"], axis = False, None
        return QuantizerSpec(**settings, axis=axis)

    # ----------------------------------------------------------------- transform hooks
    def wrap(self, original, layer, path):
        """Wraps `layer` (the fresh copy of `original`) in a `QuantizeWrapper` when selected."""
        if not self.selects_weights(original, path):
            return layer
        spec = compressible_spec(original)
        specs = {attr: self._weight_spec(original, attr, path) for attr in spec.weights}
        between = self._inner_activation_settings(original, path) if spec.kind == "separable" else None
        return QuantizeWrapper(layer, specs, between_quantizer=between)

    def _inner_activation_settings(self, layer, path):
        """`FakeQuantize` arguments for the activation quantizer a wrapper holds inside `layer` (the
        middle of a separable convolution), or None when activations of `layer` are out of scope."""
        names = self._names(layer, path)
        if not self._in_scope(names, self.config.activations):
            return None
        act = self._settings("activations", names)
        return {"mode": act.mode, "bits": act.bits, "signed": act.signed}

    def plan(self, graph, path):
        """The activation quantizers of one (sub)model: see `plan_activation_quantizers`."""
        # The layers that read the model's inputs, through the models and containers that do.
        if not graph.inner or id(graph.owner) in self.first_layer_ids:
            self.first_layer_ids |= _first_layers(graph)

        def prefix(node):  # a graph recorded from a subclassed model has a path per node
            return path if node.prefix is None else node.prefix

        def names(node):
            return [node.name, f"{prefix(node)}{node.name}"]

        for node in graph.calls:
            operation = isinstance(node.layer, keras.Operation) and not isinstance(node.layer, keras.layers.Layer)
            if node.role == "other" and operation:  # a keras.ops operation of a Functional graph
                self.float_operations.setdefault(type(node.layer).__name__, []).append(f"{prefix(node)}{node.name}")
        weight_quantized = {id(node.layer) for node in graph.calls if self.selects_weights(node.layer, prefix(node))}
        act = self.config.activations
        unified_scopes = [scope for group in act.unified_scale_ops or [] for scope in group]

        def is_ignored(node):
            return not self._in_scope(names(node), act)

        def is_unified(node):
            return node.role == "concat" or matches_scope(names(node), unified_scopes)

        return plan_activation_quantizers(
            graph,
            weight_quantized,
            quantize_inputs=self.config.quantize_inputs or graph.inner,
            quantize_outputs=self.config.quantize_outputs,
            is_ignored=is_ignored,
            is_unified=is_unified,
        )

    def make_layer(self, key, plan):
        """The `FakeQuantize` layer for an activation quantizer key of `plan`."""
        name = plan.names[key]
        names = [name, name.rsplit("_quantizer", 1)[0]]
        act = self._settings("activations", names)
        bits = self._manual_bits(names, "activations") or act.bits
        # The second input of a matmul must be signed for OpenVINO to run it in int8 (placement.py).
        signed = True if key in plan.signed and act.signed is None else act.signed
        return FakeQuantize(mode=act.mode, bits=bits, signed=signed, name=name)

    # ----------------------------------------------------------------- initialization
    def activation_quantizers(self, model):
        return [layer for layer in iter_layers(model) if isinstance(layer, FakeQuantize)]

    def weight_wrappers(self, model):
        """The layers holding weight quantizers (`QuantizeWrapper`)."""
        return [layer for layer in iter_layers(model) if isinstance(layer, QuantizeWrapper)]

    def num_init_samples(self):
        return max((c.num_init_samples for c in _range_configs(self.config)), default=0)

    def calibration_samples(self, model):
        """Range init's samples (when `model` has activation quantizers) and mixed precision's."""
        samples = self.num_init_samples() if self.activation_quantizers(model) else 0
        if self.precision is not None and self.precision.type == "hawq":
            samples = max(samples, self.precision.num_data_points)
        return samples

    def passthrough_layers(self, model):
        """The activation quantizers: their ranges are set after BatchNorm adaptation."""
        return self.activation_quantizers(model)

    def initialize_weights(self, model, batches, original_model=None):
        """Mixed precision (from `original_model`), then weight ranges from the weights."""
        if original_model is not None:
            self.initialize_precision(model, original_model, batches)
        for wrapper in self.weight_wrappers(model):
            wrapper.initialize_ranges_from_weights()

    def initialize_precision(self, model, original_model, batches):
        """Mixed precision (`initializer.precision.type: hawq`): bits per layer by sensitivity.

        Args:
            model: the compressed model.
            original_model: the FP32 model (its Hessian / loss is measured); its layers have the
                paths of the compressed model's layers.
            batches: calibration input batches.
        """
        precision = self.precision
        if precision is None or precision.type != "hawq":
            return
        originals = layers_by_path(original_model)
        kernels, axes, owners = {}, {}, {}
        for path, layer in layers_by_path(model).items():
            while not isinstance(layer, QuantizeWrapper) and isinstance(layer, keras.layers.Wrapper):
                layer = layer.layer
            if not isinstance(layer, QuantizeWrapper) or path not in originals:
                continue
            original = originals[path]
            for attr, quantizer in layer.quantizers.items():
                name = f"{path}/{attr}"
                kernels[name] = getattr(original, attr)
                axes[name] = quantizer.spec.axis if quantizer.spec.axis is not None else -1
                owners[name] = (layer, attr)
        data, seen = [], 0
        for x in batches:
            data.append(x)
            seen += int(keras.tree.flatten(x)[0].shape[0])
            if seen >= precision.num_data_points:
                break
        if not data:
            raise ValueError("Mixed precision got no samples: `dataset` yielded no batches.")
        bits_options = sorted(set(precision.bits))
        if precision.criterion == "hessian":
            traces = hutchinson_traces(
                original_model, kernels, data, precision.iter_number, precision.tolerance
            )
            sensitivity = {
                n: {b: traces[n] * quantization_error(keras.ops.convert_to_numpy(kernels[n]), b, axes[n])
                    for b in bits_options}
                for n in kernels
            }  # fmt: skip
            score = traces
        else:
            sensitivity = loss_perturbations(original_model, kernels, data, bits_options, axes)
            score = {n: sensitivity[n][bits_options[0]] for n in kernels}
        sizes = {n: int(np.prod(kernels[n].shape)) for n in kernels}
        budget = precision.average_bits or max(bits_options) / precision.compression_ratio
        budget = max(budget, min(bits_options))
        chosen = assign_bitwidths(sensitivity, sizes, bits_options, budget)
        self.precision_budget = budget
        self.precision_rows = []
        for name, bits in chosen.items():
            layer, attr = owners[name]
            quantizer = layer.quantizers[attr]
            quantizer.spec = dataclasses.replace(
                quantizer.spec, bits=bits, half_range=quantizer.spec.half_range and bits == 8
            )
            self.precision_rows.append([name, sizes[name], score[name], bits])

    def initialize(self, model, batches, verbose=1):
        """Sets every activation quantizer's range (and signedness) from calibration data.

        Runs the model eagerly with activation quantizers passing their inputs through, and
        reduces the statistics with each quantizer's range-init config.

        Returns:
            The number of samples used.
        """
        layers = self.activation_quantizers(model)
        num_samples = self.num_init_samples()
        if not layers or num_samples <= 0:
            return 0
        collectors = {}
        for layer in layers:
            rc = _range_config_for(self.config, [layer.name, layer.name.rsplit("_quantizer", 1)[0]])
            collector = RangeCollector(rc.type, rc.params.min_percentile, rc.params.max_percentile)
            collectors[id(layer)] = collector
            layer.observer = lambda x, c=collector: c.update(keras.ops.convert_to_numpy(x))
            layer.enabled = False
        try:
            seen = run_batches(model, batches, num_samples, verbose=verbose)
        finally:
            for layer in layers:
                layer.observer = None
                layer.enabled = True
        if seen == 0:
            raise ValueError(
                "Calibration data must hold at least one batch for range initialization. Received: "
                "`dataset` yielded no batches (it is empty, or an iterator that was already read to the end)."
            )
        for layer in layers:
            low, high = collectors[id(layer)].result()
            layer.quantizer.set_range(low, high)
        return seen

    # ----------------------------------------------------------------- statistics
    def statistics(self, model):
        """Rows and figures describing the quantizers in `model`."""
        weight_rows, activation_rows = [], []
        for wrapper in self.weight_wrappers(model):
            for attr, q in wrapper.quantizers.items():
                weight_rows.append(
                    [
                        wrapper.name,
                        attr,
                        q.spec.bits,
                        q.spec.mode,
                        "per-channel" if q.spec.per_channel else "per-tensor",
                        "half" if q.spec.half_range else "full",
                    ]
                )
        for layer in self.activation_quantizers(model):
            low, high = (keras.ops.convert_to_numpy(v) for v in layer.quantizer.range())
            low, high = float(np.min(low)) + 0.0, float(np.max(high)) + 0.0
            signed = layer.quantizer.is_signed
            activation_rows.append(
                [
                    layer.name,
                    layer.spec.bits,
                    layer.spec.mode,
                    "asymmetric" if signed is None else ("signed" if signed else "unsigned"),
                    f"[{low:.4g}, {high:.4g}]",
                ]
            )
        per_channel = sum(1 for r in weight_rows if r[4] == "per-channel")
        sizes = [
            int(np.prod(v.shape)) for w in self.weight_wrappers(model) for v in w.quantized_weights().values()
        ]
        figures = {
            "weight_quantizers": len(weight_rows),
            "activation_quantizers": len(activation_rows),
            "per_channel_share": per_channel / len(weight_rows) if weight_rows else 0.0,
            "unsigned_activation_share": (
                sum(1 for r in activation_rows if r[3] == "unsigned") / len(activation_rows)
                if activation_rows
                else 0.0
            ),
            "mean_weight_bits": float(np.mean([r[2] for r in weight_rows])) if weight_rows else 0.0,
            "weighted_weight_bits": (
                float(np.average([r[2] for r in weight_rows], weights=sizes)) if weight_rows else 0.0
            ),
        }
        if self.precision_budget is not None:
            figures["bits_budget"] = float(self.precision_budget)
        skipped = dict(self.skipped)
        for kind, paths in sorted(self.float_operations.items()):
            listed = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
            skipped[f"operations {kind} ({len(paths)}: {listed})"] = (
                "no quantization rule for this operation: it runs in float (quantizers are placed around it)"
            )
        return {
            "figures": figures,
            "weights": (["layer", "weight", "bits", "mode", "granularity", "range"], weight_rows),
            "activations": (["quantizer", "bits", "mode", "sign", "range"], activation_rows),
            "mixed precision": (["weight", "parameters", "sensitivity", "bits"], self.precision_rows),
            "skipped": skipped,
        }


def _range_configs(config):
    rng = config.initializer.range
    return list(rng) if isinstance(rng, (list, tuple)) else [rng]


def _range_config_for(config, names):
    """The first range-init config whose scopes match a quantizer (NNCF per-scope range init)."""
    configs = _range_configs(config)
    for rc in configs:
        targets = getattr(rc, "target_scopes", None) or []
        ignored = getattr(rc, "ignored_scopes", None) or []
        group = getattr(rc, "target_quantizer_group", None)
        if group == "weights":
            continue
        if matches_scope(names, ignored):
            continue
        if not targets or matches_scope(names, targets):
            return rc
    return configs[0]


def _first_layers(graph):
    """Ids of the layers that read a model input directly (through padding, reshape, ...)."""
    first = set()
    for ref in graph.inputs:
        frontier = [ref]
        while frontier:
            current = frontier.pop()
            for index, _ in graph.consumers(current):
                node = graph.calls[index]
                if node.role in AGNOSTIC_ROLES:
                    frontier.extend((index, j) for j in range(node.num_outputs))
                else:
                    first.add(id(node.layer))
    return first
