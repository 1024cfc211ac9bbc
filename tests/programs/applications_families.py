"""Every keras.applications family for tests/test_applications_families.py: compress, one fit step, strip;
save, load and export to OpenVINO for some; filter pruning and sparsity with one fit step.

Usage: applications_families.py MODELS EXPORTED (a JSON list of `[constructor name, input size]`, and the
comma-separated names to export). Prints one `RESULT {json}` line per model.
"""

import json
import sys
import tempfile

import keras
import numpy as np

import keras_compress as kc
from keras_compress.benchmark import compile_ir, compute_op_precisions
from keras_compress.export.strip import strip_model

config = {"compression": {"algorithm": "quantization", "weights": {"per_channel": True},
          "initializer": {"range": {"num_init_samples": 1}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 1}}}}
prune_and_sparsify = {"compression": [
    {"algorithm": "filter_pruning", "pruning_init": 0.5, "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
    {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5}]}
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
workdir = tempfile.mkdtemp()


def layer_diff(compressed, stripped):
    # Layer by layer, on generated inputs: the whole model's output is no check, since a float
    # difference of 1e-6 (a baked weight against its fake-quant at run time) that lands on a rounding
    # boundary moves an activation one step, which a random deep network amplifies (DenseNet121: 65%).
    rng, worst = np.random.default_rng(1), 0.0
    inference = {layer.name: layer for layer in stripped.layers}
    assert [layer.name for layer in compressed.layers] == list(inference)
    for layer in compressed.layers[1:]:
        if isinstance(layer.input, (list, tuple)):
            continue  # merges have no weights
        t = rng.normal(size=(1, *layer.input.shape[1:])).astype("float32")
        a, b = np.asarray(layer(t)), np.asarray(inference[layer.name](t))
        worst = max(worst, float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)))
    return worst


for name, size in json.loads(sys.argv[1]):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    x = np.random.default_rng(0).uniform(0, 1, (1, size, size, 3)).astype("float32")
    compressed, ctrl = kc.compress(model, config, dataset=x, verbose=0)
    compressed.compile(optimizer="sgd", loss=loss, run_eagerly=True)  # one step: tracing would cost more
    history = compressed.fit(x, np.zeros(1), epochs=1, verbose=0, callbacks=ctrl.callbacks())
    stripped = strip_model(compressed)
    result = {
        "model": name, "loss": history.history["loss"][-1], "skipped": ctrl.statistics().skipped(),
        "weight_quantizers": ctrl.statistics().figures()["quantization/weight_quantizers"],
        "variables": [len(model.variables), len(compressed.variables), len(stripped.variables)],
        "strip_diff": layer_diff(compressed, stripped),
    }
    pruned, pruning_ctrl = kc.compress(model, prune_and_sparsify, dataset=x, verbose=0)
    pruned.compile(optimizer="sgd", loss=loss, run_eagerly=True)
    pruning_history = pruned.fit(x, np.zeros(1), epochs=1, verbose=0, callbacks=pruning_ctrl.callbacks())
    figures = pruning_ctrl.statistics().figures()
    result["pruning"] = {"loss": pruning_history.history["loss"][-1], "flops_ratio": figures["filter_pruning/flops_ratio"],
                         "sparsity": figures["magnitude_sparsity/sparsity_level"],
                         "left": sorted({r.split(": ", 1)[1] for r in pruning_ctrl.statistics().skipped().values()})}
    if name in sys.argv[2].split(","):
        compressed.save(f"{workdir}/{name}.keras")
        xml = kc.export(keras.saving.load_model(f"{workdir}/{name}.keras"), f"{workdir}/{name}")
        result["runtime"] = {f"{t}:{p}": n for (t, p), n in compute_op_precisions(compile_ir(xml, "f32"), xml).items()}
    print("RESULT " + json.dumps(result), flush=True)
    keras.backend.clear_session()
