"""keras.ops operations in a Functional graph (`x + y`, `x * c`, `keras.ops.relu`, `keras.ops.matmul`)
under every algorithm: placed, compressed, trained, reported, exported."""


import keras
import numpy as np
import pytest

import keras_compress as kc
from helpers import int8_counts, quantization_config
from keras_compress.benchmark import compile_ir, runtime_precisions
from keras_compress.graph import iter_layers, trace_graph
from keras_compress.quantization.placement import plan_activation_quantizers

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def ops_model():
    """A stem, two convolutions joined by `x + y`, then `* 0.5`, `keras.ops.relu`, a convolution, a Gram matrix
    (`keras.ops.matmul` between two activations), `keras.ops.sin` (no rule for it) and a Dense head."""
    inputs = keras.Input((8, 8, 3), name="image")
    stem = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    a = L.Conv2D(16, 3, padding="same", name="a")(stem)
    b = L.Conv2D(16, 3, padding="same", name="b")(stem)
    x = keras.ops.relu((a + b) * 0.5)
    c = L.Conv2D(8, 1, name="c")(x)
    tokens = keras.ops.reshape(c, (-1, 64, 8))
    gram = keras.ops.matmul(keras.ops.transpose(tokens, (0, 2, 1)), tokens) / 64.0
    outputs = L.Dense(4, name="d")(L.Flatten(name="flatten")(keras.ops.sin(gram)))
    return keras.Model(inputs, outputs, name="ops_model")


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 8, 8, 3)).astype("float32"), rng.integers(0, 4, n)


def test_operations_have_the_roles_of_the_layers_they_stand_for():
    roles = {type(node.layer).__name__: node.role for node in trace_graph(ops_model()).calls}
    assert roles["Add"] == "merge"
    assert roles["Multiply"] == "activation"  # one tensor times a scalar
    assert roles["Relu"] == "activation"
    assert roles["Matmul"] == "matmul"
    assert roles["Reshape"] == roles["Transpose"] == "reshape"
    assert roles["Sin"] == "other"


def test_placement_quantizes_both_matmul_inputs_with_one_signed_quantizer_moved_above_the_reshapes():
    graph = trace_graph(ops_model())
    weight_quantized = {id(n.layer) for n in graph.calls if n.layer.name in ("stem", "a", "b", "c", "d")}
    plan = plan_activation_quantizers(graph, weight_quantized)
    names = {key: plan.names[key] for key in set(plan.edges.values())}
    matmul = next(n for n in graph.calls if n.role == "matmul")
    reshape = next(n for n in graph.calls if type(n.layer).__name__ == "Reshape")
    assert (matmul.index, 0) not in plan.edges and (matmul.index, 1) not in plan.edges
    # The transpose and the reshape move values only: one quantizer on the conv output, moved above them,
    # serves both inputs, and it is signed (the second input of a matmul: OpenVINO's int8 rule).
    key = plan.edges[(reshape.index, 0)]
    assert names[key] == "c_quantizer" and plan.signed == {key}
    add = next(n for n in graph.calls if n.role == "merge")
    # The add's result reaches conv `c` through `* 0.5` and ReLU: its inputs are quantized.
    assert {names[plan.edges[(add.index, 0)]], names[plan.edges[(add.index, 1)]]} == {"a_quantizer", "b_quantizer"}


@pytest.mark.openvino
def test_quantized_operations_train_save_and_run_int8_in_openvino(tmp_path):
    keras.utils.set_random_seed(0)
    model = ops_model()
    x, y = data()
    compressed, ctrl = kc.compress(model, quantization_config(), dataset=x)
    quantizers = {layer.name: layer for layer in iter_layers(compressed) if isinstance(layer, kc.FakeQuantize)}
    assert quantizers["c_quantizer"].quantizer.is_signed  # forced, though c's outputs may all be positive
    skipped = ctrl.statistics().skipped()
    # Listed once per kind of operation, with their count and names (Keras numbers them: sin, sin_1, ...).
    [(key, reason)] = [(k, v) for k, v in skipped.items() if k.startswith("operations Sin (1: sin")]
    assert reason.startswith("quantization: no quantization rule for this operation")
    # 8-bit quantization moves the logits by a few percent, not more.
    reference, output = model.predict(x, verbose=0), compressed.predict(x, verbose=0)
    assert np.linalg.norm(output - reference) < 0.1 * np.linalg.norm(reference)
    compressed.compile(optimizer="adam", loss=LOSS)
    history = compressed.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=ctrl.callbacks())
    assert np.isfinite(history.history["loss"]).all()

    xml = kc.export(compressed, tmp_path / "ops")
    counts = runtime_precisions(compile_ir(xml, "f32"), ("Convolution", "FullyConnected", "MatMul"))
    # Every one in int8 (u8 or i8 by the CPU's kernels); the convolutions read unsigned quantizers: u8 on any CPU.
    assert int8_counts(counts) == {("Convolution", "int8"): 4, ("MatMul", "int8"): 1, ("FullyConnected", "int8"): 1}
    assert counts[("Convolution", "u8")] == 4, counts


@pytest.mark.parametrize(
    "section",
    [
        {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5},
        {"algorithm": "rb_sparsity", "sparsity_init": 0.5},
        {"algorithm": "movement_sparsity", "params": {"warmup_start_epoch": 0, "warmup_end_epoch": 1,
                                                      "importance_regularization_factor": 0.01,
                                                      "sparsity_target": 0.5}},
        {"algorithm": "filter_pruning", "pruning_init": 0.5},
        {**quantization_config()["compression"],
         "initializer": {"precision": {"type": "hawq", "bits": [4, 8], "average_bits": 6, "num_data_points": 8,
                                       "iter_number": 4},
                         "range": {"num_init_samples": 8}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
    ],
    ids=["magnitude", "rb", "movement", "filter_pruning", "mixed_precision"],
)  # fmt: skip
def test_every_algorithm_compresses_and_trains_a_model_with_operations(section):
    keras.utils.set_random_seed(0)
    model = ops_model()
    x, y = data()
    compressed, ctrl = kc.compress(model, {"compression": section}, dataset=x)
    compressed.compile(optimizer="adam", loss=LOSS)
    history = compressed.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=ctrl.callbacks())
    assert np.isfinite(history.history["loss"]).all()
    figures = ctrl.statistics().figures()
    algorithm = section["algorithm"]
    stripped = ctrl.strip()
    if algorithm == "magnitude_sparsity":
        assert figures["magnitude_sparsity/sparsity_level"] == pytest.approx(0.5, abs=0.01)
        assert figures["magnitude_sparsity/sparsified_layers"] == 5
    elif algorithm == "rb_sparsity":
        assert figures["rb_sparsity/sparsified_layers"] == 5
    elif algorithm == "movement_sparsity":
        assert figures["movement_sparsity/sparsified_layers"] == 1  # Dense `d` only
        # Tied scores after two short epochs mask a little more than the target.
        assert figures["movement_sparsity/sparsity_level"] == pytest.approx(0.5, abs=0.1)
    elif algorithm == "filter_pruning":
        # `a` and `b` are joined by `x + y`: pruned together; `c` feeds a reshape: kept whole.
        kept = {layer.name: layer.filters for layer in stripped.layers if isinstance(layer, L.Conv2D)}
        # Half of the 16 filters of `a` and `b` (pruned in multiples of 8); the stem is a first convolution.
        assert kept == {"stem": 8, "a": 8, "b": 8, "c": 8}
        np.testing.assert_allclose(stripped.predict(x, verbose=0), compressed.predict(x, verbose=0), atol=1e-4)
    else:
        rows = ctrl.statistics().sections["quantization"]["mixed precision"][1]
        assert len(rows) == 5 and {row[3] for row in rows} <= {4, 8}
        assert figures["quantization/weighted_weight_bits"] <= 6.0 + 1e-6
    if algorithm != "filter_pruning":
        np.testing.assert_allclose(stripped.predict(x, verbose=0), compressed.predict(x, verbose=0), atol=1e-4)
