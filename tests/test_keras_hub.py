"""KerasHub models compressed as they are: classes and task API kept, int8 in OpenVINO, reload in a new process.

Tiny random configurations: nothing is downloaded.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

keras_hub = pytest.importorskip("keras_hub")

import keras_compress as kc  # noqa: E402
from keras_compress.graph import iter_layers, layers_by_path  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
INT8 = ("u8", "i8")


def token_batch(n=16, length=16, vocab=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"token_ids": rng.integers(1, vocab, (n, length)).astype("int32"), "padding_mask": np.ones((n, length), "int32")}


def gpt2_lm():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, max_sequence_length=16
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def quantized_layers(model):
    """The distinct layers of `model` that quantize their weights (inside any input wrapper)."""
    found = {}
    for layer in layers_by_path(model).values():
        while isinstance(layer, kc.InputsWrapper):
            layer = layer.layer
        if isinstance(layer, kc.QuantizeWrapper):
            found[id(layer)] = layer
    return list(found.values())


def operation_quantizers(model):
    """The activation quantizers on the operands of the matmuls the containers compute themselves."""
    return [layer for path, layer in layers_by_path(model).items() if "/_compression_operations/" in path]


def reload_and_export(model, x, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    expected = model.predict(x, verbose=0)
    np.savez(tmp_path / "x.npz", **x)
    np.save(tmp_path / "expected.npy", expected)
    program = TESTS / "programs" / "reload_and_export.py"
    command = [sys.executable, str(program), str(path), str(tmp_path / "x.npz"), str(tmp_path / "expected.npy"),
               str(tmp_path / "ir"), "--module", "keras_hub"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_compressed_gpt2_keeps_its_class_and_generates_what_its_forward_pass_chooses():
    model = gpt2_lm()
    x = token_batch()
    compressed, ctrl = kc.compress(model, "int8", dataset=x, verbose=0)
    assert type(compressed).__name__ == "GPT2CausalLM" and isinstance(compressed, keras_hub.models.GPT2CausalLM)
    assert not any(isinstance(layer, kc.CompressionLayer) for layer in iter_layers(model))  # the user's is untouched
    paths = layers_by_path(compressed)
    # The tied-embedding LM head (with its input quantizer) and every projection and feed-forward layer.
    head = paths["gpt2_backbone/token_embedding"]
    assert isinstance(head, kc.InputsWrapper) and isinstance(head.layer, kc.QuantizeWrapper)
    assert len(quantized_layers(compressed)) == 2 * 6 + 1
    # Both attention matmuls of each block have quantized inputs (`keras_compress.operations`): the key, the
    # scaled query and the value on the matmuls; the probabilities at the input of the dropout before theirs.
    assert len(operation_quantizers(compressed)) == 2 * 3
    dropout = paths["gpt2_backbone/transformer_layer_0/_self_attention_layer/_dropout_layer"]
    assert isinstance(dropout, kc.InputsWrapper) and dropout.input_layers[0].quantizer.is_signed is False

    compressed.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       sampler="greedy")  # fmt: skip
    compressed.fit(x, x["token_ids"], epochs=1, batch_size=8, verbose=0, callbacks=ctrl.callbacks())
    prompt = np.array([[5, 6, 7] + [0] * 13], "int32")
    mask = np.array([[1, 1, 1] + [0] * 13], "int32")
    generated = compressed.generate({"token_ids": prompt, "padding_mask": mask}, max_length=16, stop_token_ids=None)
    tokens, padding = prompt.copy(), mask.copy()
    for position in range(3, 16):  # greedy decoding by the plain forward pass
        logits = compressed.predict({"token_ids": tokens, "padding_mask": padding}, verbose=0)
        tokens[0, position], padding[0, position] = int(np.argmax(logits[0, position - 1])), 1
    np.testing.assert_array_equal(generated["token_ids"], tokens)

    stripped = ctrl.strip()
    assert isinstance(stripped, keras_hub.models.GPT2CausalLM)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), compressed.predict(x, verbose=0), atol=1e-4)


def test_a_compressed_gpt2_reloads_in_a_new_process_and_runs_every_matmul_in_int8(tmp_path):
    model = gpt2_lm()
    x = token_batch()
    compressed, _ = kc.compress(model, "int8", dataset=x, verbose=0)
    result = reload_and_export(compressed, {k: v[:4] for k, v in x.items()}, tmp_path)
    assert result["type"] == "GPT2CausalLM" and result["same"] < 1e-5
    counts = result["precisions"]
    # 2 blocks x (4 projections + 2 feed-forward + 2 attention matmuls) + the LM head.
    assert sum(counts.values()) == 17 and all(key.split(":")[1] in INT8 for key in counts), counts


def test_grouped_query_attention_matmuls_are_quantized():
    keras.utils.set_random_seed(0)
    model = keras_hub.models.Llama3Backbone(vocabulary_size=64, num_layers=1, num_query_heads=4, num_key_value_heads=2,
                                            hidden_dim=32, intermediate_dim=64)  # fmt: skip
    x = token_batch()
    compressed, ctrl = kc.compress(model, "int8", dataset=x, verbose=0)
    assert isinstance(compressed, keras_hub.models.Llama3Backbone)
    # The query-key and probability-value einsums of the grouped-query attention: both inputs quantized.
    assert len(operation_quantizers(compressed)) == 4
    # query, key, value, output; gate, intermediate and output feed-forward; the tied LM head
    assert len(quantized_layers(compressed)) == 8
    reference = model.predict(x, verbose=0)
    assert np.linalg.norm(compressed.predict(x, verbose=0) - reference) < 0.1 * np.linalg.norm(reference)


def test_a_compressed_bert_classifier_predicts_and_strips_to_its_class():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32,
                                             intermediate_dim=64, max_sequence_length=16)  # fmt: skip
    model = keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=3, preprocessor=None)
    x = {**token_batch(), "segment_ids": np.zeros((16, 16), "int32")}
    compressed, ctrl = kc.compress(model, "int8", dataset=x, verbose=0)
    assert isinstance(compressed, keras_hub.models.BertTextClassifier)
    assert compressed.predict(x, verbose=0).shape == (16, 3)
    assert isinstance(ctrl.strip(), keras_hub.models.BertTextClassifier)


def test_gemma_query_key_value_projections_run_in_int8(tmp_path):
    # Gemma's projections are EinsumDense "btd,ndh->btnh": the contracted axis is the kernel's second.
    # OpenVINO ran them in f32 while the kernel kept that layout (one scale per output unit); they are
    # computed on the transposed kernel, "btd,dnh->btnh" (`compressible.contracted_first`).
    from keras_compress.benchmark import compile_ir, compute_op_precisions

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GemmaBackbone(vocabulary_size=64, num_layers=1, num_query_heads=4, num_key_value_heads=1,
                                              hidden_dim=32, intermediate_dim=64, head_dim=8)  # fmt: skip
    model = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    x = token_batch()
    compressed, _ = kc.compress(model, "int8", dataset=x, verbose=0)
    assert isinstance(compressed, keras_hub.models.GemmaCausalLM)
    # query, key, value, output; gate, gate 2 and output feed-forward; the tied LM head
    assert len(quantized_layers(compressed)) == 8
    expected = compressed.predict(x, verbose=0)
    reference = model.predict(x, verbose=0)
    assert np.linalg.norm(expected - reference) < 0.1 * np.linalg.norm(reference)
    xml = kc.export(compressed, tmp_path / "gemma")
    compiled = compile_ir(xml, "f32")
    counts = compute_op_precisions(compiled, xml)
    # 7 projections + the LM head (FullyConnected) and the two attention matmuls
    assert sum(counts.values()) == 10 and all(precision in INT8 for _, precision in counts), counts
    got = compiled(x)[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
