"""The interface every compression algorithm implements; the controller knows nothing else of them.

An algorithm object is made from its config section (`cls(section, target_device)`) and takes part in
every stage of a model's compression:

- plan, while the transformer clones the model: `wrap(original, layer, path)` swaps a layer for its
  wrapper, `plan(graph, path)` and `make_layer(key, plan)` insert layers on graph edges (in a
  subclassed model, on the edges of a graph recorded from one forward pass);
- initialize, in `kc.compress` with the calibration data: `calibration_samples(model)`,
  `initialize_weights(model, batches, original_model)`, `passthrough_layers(model)`,
  `initialize(model, batches, verbose)`;
- schedule, from the controller's callbacks: `on_compress`, `set_steps_per_epoch`, `on_train_begin`,
  `on_epoch_begin`, `on_train_batch_begin` (and `set_level` for accuracy-aware training);
- report: `statistics(model)` (numbers; `progress_figures` names those that move during training);
- level (accuracy-aware training): `adaptive`, `target_level()`, `set_level(model, level)`, `level`;
- export: `export_model(model)`, the model-level step after every layer is stripped (filter
  pruning removes the pruned filters); `kc.export` finds the algorithms of a model by their
  `layer_types`, so it needs no controller;
- resume: `restore(model, epoch)` instead of `on_compress` when `kc.compress` binds a controller to
  an already-compressed model (a loaded `.keras` file): the masks, ranges and progress counters
  are variables of the model, so nothing else needs saving.

Initialization runs in this order for all algorithms together: `initialize_weights` (data-free or
weight-side: weight ranges, mixed precision), BatchNorm adaptation (with every algorithm's
`passthrough_layers` passing their inputs through), then `initialize` (activation ranges).
"""

from __future__ import annotations

__all__ = ["CompressionAlgorithm"]


class CompressionAlgorithm:
    """Base class of the algorithms: every hook does nothing, so an algorithm overrides what it uses.

    Args:
        config: the algorithm's config section.
        target_device: the config's `target_device`.
        config_path: the JSON path of the section (`("compression", 1)` in a list), for messages.

    Attributes:
        name: the config's `algorithm` name.
        level: the current compression level (pruning, sparsity), or None.
    """

    name = ""
    level = None
    #: Whether the algorithm needs the model's whole graph (filter pruning: channel dependencies), so
    #: cannot compress a subclassed model, whose `call()` may hold operations no recording sees.
    needs_graph = False
    #: The layer classes this algorithm puts into a model: a model holding one of them is
    #: already compressed by this algorithm.
    layer_types = ()
    #: Whether its wrappers go around the others' (quantization: it sees the weights they mask).
    wraps_outermost = False
    #: Whether its schedule moves every optimizer step (`on_train_batch_begin` needs the step then).
    per_step = False
    #: Whether accuracy-aware training can move its level (`target_level`, `set_level`). The config's
    #: `adaptive_compression_level` mode accepts the algorithms that can (tests tie the two lists).
    adaptive = False
    #: The names of its `statistics` figures that move during training (into `fit`'s logs every epoch).
    progress_figures = ()
    #: What it compresses, for the warning about a model in which it finds nothing to compress.
    compresses = ""

    def __init__(self, config, target_device="ANY", config_path=("compression",)):
        self.config = config
        self.target_device = target_device
        self.config_path = tuple(config_path)

    # ----------------------------------------------------------------- plan
    def wrap(self, original, layer, path):
        """The layer to put in the clone for `original` (`layer` is its fresh copy, maybe wrapped already)."""
        return layer

    def plan(self, graph, path):
        """Layers to insert on the edges of one (sub)model's `graph`, or None. See `transform_model`."""
        return None

    def make_layer(self, key, plan):
        """The layer inserted for a key of this algorithm's `plan`."""
        raise ValueError(f"{type(self).__name__} inserts no layers. Received: key={key!r}")

    # ----------------------------------------------------------------- initialize
    def calibration_samples(self, model):
        """How many calibration samples initialization of `model` reads (0: it needs no data)."""
        return 0

    def initialize_weights(self, model, batches, original_model=None):
        """Weight-side initialization, before BatchNorm adaptation. `batches` is an iterable of inputs."""

    def passthrough_layers(self, model):
        """Layers of `model` with an `enabled` switch that must pass their inputs through while
        BatchNorm statistics are re-estimated (activation quantizers whose ranges are not set yet)."""
        return []

    def initialize(self, model, batches, verbose=1):
        """Data-driven initialization after BatchNorm adaptation (activation ranges); `verbose`
        shows a progress bar."""

    # ----------------------------------------------------------------- schedule
    def on_compress(self, model):
        """Right after the compressed model is built (before initialization)."""

    def restore(self, model, epoch):
        """Takes up an already-compressed `model` (called instead of `on_compress`).

        Masks, ranges and levels are variables of the model; this reads what the schedule needs
        from them, so that it continues where it stopped. `epoch` is the epoch of the last
        schedule update (0 when the model was never trained under a controller).
        """

    def set_steps_per_epoch(self, steps):
        """`fit`'s steps per epoch, for per-step schedules."""

    def on_train_begin(self, model):
        """When `fit` starts."""

    def on_epoch_begin(self, model, epoch):
        """At the start of every epoch (0-based)."""

    def on_epoch_end(self, model):
        """At the end of every epoch, after its last optimizer step (before the callbacks that save or
        evaluate the model: the schedule callback comes first in `ctrl.callbacks()`)."""

    def on_train_batch_begin(self, model, step):
        """Before every optimizer step, with the global step."""

    # ----------------------------------------------------------------- report, export, state
    def statistics(self, model):
        """`{"figures": {name: number}, table name: (header, rows), ..., "skipped": {layer: reason}}`."""
        return {"figures": {}}

    @classmethod
    def export_model(cls, model):
        """The model-level step of export, on a model whose layers are stripped (filter pruning removes
        the pruned filters); the model itself by default."""
        return model

    # ----------------------------------------------------------------- level
    def target_level(self):
        """The level its schedule aims at (what accuracy-aware training may go up to), or None."""
        return None

    def set_level(self, model, level):
        """Sets the compression level now, overriding the schedule (accuracy-aware training)."""
        raise ValueError(
            f"The {self.name} algorithm has no compression level to set. Received: level={level}"
        )
