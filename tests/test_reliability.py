"""Reliability under faults and bad input: every case of the bad-input corpus gives a clear error
that names its cause, or a documented fallback, and leaves the user's model and files as they were;
degenerate statistics stay finite through export to OpenVINO; `kc.compress` and `fit` inside
`tf.distribute.MirroredStrategy` match one device; compressed models load in safe mode and configs
never run code. The cases and their outcomes are listed in docs/reliability.md.

Covered elsewhere (and referenced there): fuzzed configs (tests/test_config.py), a fit interrupted
and resumed with BackupAndRestore (tests/test_callbacks.py), an export interrupted half-way
(tests/test_export.py).
"""


import builtins
import json
import logging
import re
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_compress as kc
from helpers import results_of, run_program
from keras_compress.graph import iter_layers

L = keras.layers
BAD = Path(__file__).parent / "bad_inputs"


# ---------------------------------------------------------------------------------------------------
# Models, configs, data


def small_cnn(name="small"):
    """img (8x8x3) -> conv (relu) -> flat -> fc (2)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(2, name="fc")(x)
    return keras.Model(inp, out, name=name)


def two_input_model():
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    out = L.Dense(2, name="fc")(L.Concatenate(name="cat")([a, b]))
    return keras.Model([a, b], out, name="two_inputs")


def dict_input_model():
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    out = L.Dense(2, name="fc")(L.Add(name="add")([a, b]))
    return keras.Model({"a": a, "b": b}, out, name="dict_inputs")


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(3)

    def call(self, x):
        return self.dense(x)


def subclassed_model():
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    return model


class NeedsArguments(keras.Model):
    def __init__(self, units, **kwargs):  # `units` is not in get_config: no copy can be made
        super().__init__(**kwargs)
        self.dense = L.Dense(units)

    def call(self, x):
        return self.dense(x)


def unconfigurable_subclass():
    model = NeedsArguments(3)
    model(np.zeros((1, 4), "float32"))
    return model


def unbuilt_sequential():
    return keras.Sequential([L.Dense(4, name="d1"), L.Dense(2, name="d2")])


def a_dense_layer():
    layer = L.Dense(2)
    layer.build((None, 4))
    return layer


def qat(bn_samples=0, init_samples=16, **section):
    q = {
        "algorithm": "quantization",
        "weights": {"per_channel": True},
        "initializer": {
            "range": {"num_init_samples": init_samples},
            "batchnorm_adaptation": {"num_bn_adaptation_samples": bn_samples},
        },
    }
    q.update(section)
    return {"compression": q}


def magnitude(**params):
    return {"compression": {"algorithm": "magnitude_sparsity", "params": params,
                            "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}}  # fmt: skip


def images(n=16, seed=0, shape=(8, 8, 3)):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def with_nan():
    x = images()
    x[3, 1, 2, 0] = np.nan
    return x


def batches_then_inf():
    x = images(8)
    yield x[:4]
    bad = x[4:].copy()
    bad[0, 0, 0, 0] = np.inf
    yield bad


def no_batches():
    return iter(())


# ---------------------------------------------------------------------------------------------------
# "Nothing changed" checks


def snapshot(obj):
    """What must not change: the config (as JSON), every weight, and the built state."""
    try:
        config = json.dumps(obj.get_config(), sort_keys=True, default=repr)
    except Exception:  # noqa: BLE001 - a subclassed model may not have a config
        config = None
    return config, [np.array(w, copy=True) for w in obj.get_weights()], obj.built


def assert_unchanged(obj, before):
    config, weights, built = snapshot(obj)
    assert config == before[0]
    assert built == before[2]
    assert len(weights) == len(before[1])
    for a, b in zip(weights, before[1]):
        np.testing.assert_array_equal(a, b)


def file_state(source):
    """Bytes and mtime of a config file (None for configs that are not files)."""
    if isinstance(source, Path) and source.is_file():
        stat = source.stat()
        return source.read_bytes(), stat.st_mtime_ns
    return None


def tree_state(directory):
    return sorted((str(p.relative_to(directory)), p.is_file() and p.read_bytes()) for p in directory.rglob("*"))


# ---------------------------------------------------------------------------------------------------
# The corpus of bad input that raises: (id, model, config, dataset, error type, patterns in the message)

PWNED = "KC_PWNED"


def case(id, config, dataset=None, error=ValueError, patterns=(), model=small_cnn):
    return pytest.param(model, config, dataset, error, patterns, id=id)


ERROR_CASES = [
    # Config documents: malformed JSON, wrong types, out-of-range values, conflicts, code.
    case("malformed_json_file", BAD / "truncated.json", error=kc.ConfigError,
         patterns=[r"^\$: invalid JSON: Expecting ',' delimiter at line 2 column 1"]),
    case("empty_json_file", BAD / "empty.json", error=kc.ConfigError,
         patterns=[r"^\$: invalid JSON: Expecting value at line 1 column 1"]),
    case("malformed_json_string", '{"compression": {"algorithm": "quantization",}}', error=kc.ConfigError,
         patterns=[r"^\$: invalid JSON: .* at line 1 column \d+"]),
    case("not_utf8_file", BAD / "not_utf8.json", error=kc.ConfigError,
         patterns=[r"^\$: cannot read config file '.*not_utf8.json'"]),
    case("missing_config_file", BAD / "no_such_file.json", error=kc.ConfigError,
         patterns=[r"^\$: config file not found: '.*no_such_file.json'"]),
    case("config_path_is_a_directory", BAD, error=kc.ConfigError,
         patterns=[r"^\$: config path is a directory, not a JSON file: '.*bad_inputs'"]),
    case("top_level_array", BAD / "top_level_array.json", error=kc.ConfigError,
         patterns=[r"^\$: the config must be a JSON object \(received an array\)"]),
    case("config_of_wrong_type", 42, error=kc.ConfigError,
         patterns=[r"`source` must be a path, a dict, a JSON string or a CompressionConfig\. Received: int"]),
    case("nan_in_config", BAD / "nan_value.json", error=kc.ConfigError,
         patterns=[r"^\$: invalid JSON: NaN is not valid JSON"]),
    case("duplicate_key", BAD / "duplicate_key.json", error=kc.ConfigError,
         patterns=[r"key 'algorithm' appears twice in one object"]),
    case("wrong_types_all_listed", BAD / "wrong_types.json", error=kc.ConfigError,
         patterns=[r"compression\.weights\.bits: must be an integer \(received \"8\"\)",
                   r"compression\.weights\.per_channel: must be true or false \(received \"yes\"\)",
                   r"compression\.initializer\.range\.num_init_samples: must be >= 0 \(received -5\)"]),
    case("scopes_of_wrong_type", qat(ignored_scopes=5), error=kc.ConfigError,
         patterns=[r"compression\.ignored_scopes: must be a string or an array of strings \(received 5\)"]),
    case("bits_out_of_range", qat(weights={"bits": 12}), error=kc.ConfigError,
         patterns=[r"compression\.weights\.bits: `bits` must be between 2 and 8\. Received: bits=12"]),
    case("sparsity_target_out_of_range", magnitude(sparsity_target=1.5), error=kc.ConfigError,
         patterns=[r"compression\.params\.sparsity_target: must be < 1 \(received 1\.5\)"]),
    case("percentiles_in_wrong_order",
         qat(initializer={"range": {"type": "percentile", "params": {"min_percentile": 90, "max_percentile": 10}}}),
         error=kc.ConfigError,
         patterns=[r"compression\.initializer\.range\.params\.min_percentile: must be < `max_percentile` \(10"]),
    case("unknown_algorithm", {"compression": {"algorithm": "quantisation"}}, error=kc.ConfigError,
         patterns=[r"compression\.algorithm: unknown algorithm \"quantisation\"; did you mean 'quantization'\?"]),
    case("misspelt_key", qat(weigths={"bits": 8}), error=kc.ConfigError,
         patterns=[r"compression\.weigths: unknown key 'weigths'; did you mean 'weights'\?"]),
    case("two_quantization_sections", BAD / "two_quantization_sections.json", error=kc.ConfigError,
         patterns=[r"compression\[1\]\.algorithm: 'quantization' appears more than once; "
                   r"give each algorithm one section"]),
    case("two_sparsity_algorithms",
         {"compression": [{"algorithm": "magnitude_sparsity"}, {"algorithm": "rb_sparsity"}]}, error=kc.ConfigError,
         patterns=[r"compression\[1\]\.algorithm: only one sparsity algorithm can be used at a time "
                   r"\(received 'magnitude_sparsity' and 'rb_sparsity'\)"]),
    case("two_accuracy_bounds",
         {**qat(), "accuracy_aware_training": {"mode": "early_exit", "params": {
             "maximal_relative_accuracy_degradation": 1.0, "maximal_absolute_accuracy_degradation": 0.01}}},
         error=kc.ConfigError,
         patterns=[r"accuracy_aware_training\.params\.maximal_absolute_accuracy_degradation: give only one of"]),
    case("adaptive_level_without_a_level",
         {**qat(), "accuracy_aware_training": {"mode": "adaptive_compression_level"}}, error=kc.ConfigError,
         patterns=[r"accuracy_aware_training\.mode: 'adaptive_compression_level' needs exactly one "
                   r"filter_pruning or sparsity algorithm in `compression` \(received: quantization\)"]),
    case("invalid_scope_regex", qat(ignored_scopes=["{re}conv[0-9"]), error=kc.ConfigError,
         patterns=[r"compression\.ignored_scopes: '\{re\}conv\[0-9' is not a valid regular expression"]),
    case("misspelt_scope_name", qat(ignored_scopes=["convv"]), error=kc.ConfigError,
         patterns=[r"compression\.ignored_scopes: 'convv' is not the name of a layer of model 'small'; "
                   r"did you mean 'conv'\?", r"validate_scopes: false"]),
    case("misspelt_group_scope_name", qat(weights={"target_scopes": ["fc1"]}), error=kc.ConfigError,
         patterns=[r"compression\.weights\.target_scopes: 'fc1' is not the name of a layer .*did you mean 'fc'\?"]),
    # Every other key that names layers: checked like ignored_scopes (regex at load, names at compress).
    case("invalid_regex_in_scope_overrides", qat(scope_overrides={"weights": {"{re}conv[": {"bits": 4}}}),
         error=kc.ConfigError, patterns=[r'^compression\.scope_overrides\.weights\["\{re\}conv\["\]: '
                                         r"'\{re\}conv\[' is not a valid regular expression"]),
    case("misspelt_scope_overrides_key", qat(scope_overrides={"weights": {"convv": {"bits": 4}}}),
         error=kc.ConfigError, patterns=[r"^compression\.scope_overrides\.weights\.convv: 'convv' is not the name "
                                         r"of a layer of model 'small'; did you mean 'conv'\?"]),
    case("misspelt_activation_scope_overrides_key", qat(scope_overrides={"activations": {"flatt": {"bits": 4}}}),
         error=kc.ConfigError, patterns=[r"^compression\.scope_overrides\.activations\.flatt: 'flatt' is not the "
                                         r"name of a layer .*did you mean 'flat'\?"]),
    case("invalid_regex_in_bitwidth_per_scope", qat(initializer={"precision": {"bitwidth_per_scope": [[4, "{re}c("]]}}),
         error=kc.ConfigError, patterns=[r"^compression\.initializer\.precision\.bitwidth_per_scope\[0\]: "
                                         r"'\{re\}c\(' is not a valid regular expression"]),
    case("misspelt_bitwidth_per_scope", qat(initializer={"precision": {"bitwidth_per_scope": [[4, "conv"],
                                                                                            [2, "fcc"]]}}),
         error=kc.ConfigError, patterns=[r"^compression\.initializer\.precision\.bitwidth_per_scope\[1\]: 'fcc' is "
                                         r"not the name of a layer of model 'small'; did you mean 'fc'\?"]),
    case("misspelt_bitwidth_per_scope_output", qat(initializer={"precision": {"bitwidth_per_scope": [
        [4, "flatt|OUTPUT"]]}}), error=kc.ConfigError,
         patterns=[r"^compression\.initializer\.precision\.bitwidth_per_scope\[0\]: 'flatt' is not the name of a "
                   r"layer .*did you mean 'flat'\?"]),
    case("unknown_bitwidth_per_scope_suffix", qat(initializer={"precision": {"bitwidth_per_scope": [
        [4, "conv|INPUT0"]]}}), error=kc.ConfigError,
         patterns=[r"^compression\.initializer\.precision\.bitwidth_per_scope\[0\]: 'conv\|INPUT0' ends in "
                   r"'\|INPUT0'; a bitwidth_per_scope scope may end in \|WEIGHT or \|OUTPUT"]),
    case("nncf_pytorch_scope_naming_no_layer", qat(initializer={"precision": {"bitwidth_per_scope": [
        [8, "ResNet/NNCFConv2d[conv1]/conv2d_0|WEIGHT"]]}}), error=kc.ConfigError,
         patterns=[r"^compression\.initializer\.precision\.bitwidth_per_scope\[0\]: "
                   r"'ResNet/NNCFConv2d\[conv1\]/conv2d_0\|WEIGHT' is an NNCF PyTorch scope; model 'small' has no "
                   r"layer it names \(looked for 'conv1'\)\. Keras scopes are layer names"]),
    case("nncf_pytorch_manual_precision_config", BAD / "nncf_torch_manual_precision.json", error=kc.ConfigError,
         patterns=[r"^compression\.initializer\.precision\.bitwidth_per_scope\[2\]: 'ResNet/Sequential\[layer1\]/"
                   r"Bottleneck\[0\]/NNCFConv2d\[conv1\]/conv2d_0\|WEIGHT' is an NNCF PyTorch scope; model 'small' "
                   r"has no layer it names \(looked for 'layer1\.0\.conv1', 'layer1_0_conv1', 'layer1/0/conv1'\)",
                   r"^compression\.initializer\.precision\.bitwidth_per_scope: \.\.\. and 5 more NNCF PyTorch "
                   r"scopes that name no layer of model 'small'$"]),
    case("invalid_regex_in_unified_scale_ops", qat(activations={"unified_scale_ops": [["{re}a(", "conv"]]}),
         error=kc.ConfigError, patterns=[r"^compression\.activations\.unified_scale_ops\[0\]: '\{re\}a\(' is not "
                                         r"a valid regular expression"]),
    case("misspelt_unified_scale_ops", qat(activations={"unified_scale_ops": [["conv", "fcc"]]}),
         error=kc.ConfigError, patterns=[r"^compression\.activations\.unified_scale_ops\[0\]\[1\]: 'fcc' is not "
                                         r"the name of a layer .*did you mean 'fc'\?"]),
    case("invalid_regex_in_range_rule_scopes", qat(initializer={"range": [{"target_scopes": ["{re}("]}]}),
         error=kc.ConfigError, patterns=[r"^compression\.initializer\.range\[0\]\.target_scopes: '\{re\}\(' is "
                                         r"not a valid regular expression"]),
    case("misspelt_range_rule_scope", qat(initializer={"range": [{"num_init_samples": 8, "ignored_scopes": ["flatt"]}]}),
         error=kc.ConfigError, patterns=[r"^compression\.initializer\.range\[0\]\.ignored_scopes: 'flatt' is not the "
                                         r"name of a layer .*did you mean 'flat'\?"]),
    case("misspelt_sparse_structure_scope", {"compression": {
        "algorithm": "movement_sparsity", "params": {"warmup_start_epoch": 1, "warmup_end_epoch": 3,
                                                     "importance_regularization_factor": 0.1},
        "sparse_structure_by_scopes": [{"mode": "block", "sparse_factors": [2, 2], "target_scopes": ["fcc"]}]}},
         error=kc.ConfigError, patterns=[r"^compression\.sparse_structure_by_scopes\[0\]\.target_scopes: 'fcc' is "
                                         r"not the name of a layer .*did you mean 'fc'\?"]),
    # Schedules that contradict themselves, and what keras_compress does not do.
    case("sparsity_target_epoch_zero", magnitude(sparsity_target_epoch=0), error=kc.ConfigError,
         patterns=[r"^compression\.params\.sparsity_target_epoch: must be >= 1 for the polynomial schedule, "
                   r"which reaches `sparsity_target` at that epoch \(received 0\)"]),
    case("freeze_before_target", magnitude(sparsity_target_epoch=10, sparsity_freeze_epoch=5), error=kc.ConfigError,
         patterns=[r"^compression\.params\.sparsity_freeze_epoch: must be > `sparsity_target_epoch` \(10\): the "
                   r"masks stop changing at the freeze epoch, so `sparsity_target` would never be reached "
                   r"\(received 5\)"]),
    case("freeze_before_last_multistep", magnitude(schedule="multistep", multistep_steps=[2, 6],
                                                   multistep_sparsity_levels=[0.1, 0.3, 0.5], sparsity_freeze_epoch=4),
         error=kc.ConfigError,
         patterns=[r"^compression\.params\.sparsity_freeze_epoch: must be > the last of `multistep_steps` \(6\)"]),
    case("adaptive_level_that_never_adapts",
         {**magnitude(), "accuracy_aware_training": {"mode": "adaptive_compression_level", "params": {
             "initial_training_phase_epochs": 10, "maximal_total_epochs": 8}}}, error=kc.ConfigError,
         patterns=[r"^accuracy_aware_training\.params\.initial_training_phase_epochs: must be < "
                   r"`maximal_total_epochs` \(8\): training would end before the compression level is ever adapted"]),
    case("autoq_precision", qat(initializer={"precision": {"type": "autoq"}}), error=kc.ConfigError,
         patterns=[r"^compression\.initializer\.precision\.type: 'autoq' \(NNCF's reinforcement-learning bit-width "
                   r"search\) is not supported; use 'hawq' .* or 'manual'"]),
    case("python_code_as_config_string", f"__import__('os').system('touch {PWNED}')", error=kc.ConfigError,
         patterns=[r"^\$: config file not found: '__import__\('os'\)"]),
    case("python_code_as_algorithm", BAD / "code_as_algorithm.json", error=kc.ConfigError,
         patterns=[r"compression\.algorithm: unknown algorithm \"__import__\('os'\)"]),
    # Calibration data: empty, wrongly shaped, wrong type, NaN/Inf.
    case("empty_array", qat(), np.zeros((0, 8, 8, 3), "float32"),
         patterns=[r"Calibration data must hold at least one sample .* Received: arrays of shapes \[\(0, 8, 8, 3\)\]"]),
    case("empty_dataset", qat(), tf.data.Dataset.from_tensor_slices(np.zeros((0, 8, 8, 3), "float32")).batch(4),
         patterns=[r"Calibration data must not be empty\. Received: a tf\.data\.Dataset with no elements"]),
    case("empty_generator", qat(), no_batches,
         patterns=[r"Calibration data must hold at least one batch for range initialization\. "
                   r"Received: `dataset` yielded no batches"]),
    case("empty_generator_bn_adaptation", {"compression": {"algorithm": "magnitude_sparsity"}}, no_batches,
         model=lambda: bn_model(),
         patterns=[r"Calibration data must hold at least one batch for BatchNorm adaptation"]),
    case("wrong_rank", qat(), np.zeros((16, 5), "float32"),
         patterns=[r"input 'img' expects shape \(None, 8, 8, 3\) \(batch first\)\. Received: shape \(16, 5\)\."]),
    case("wrong_image_size", qat(), images(shape=(9, 9, 3)),
         patterns=[r"input 'img' expects shape \(None, 8, 8, 3\) .* Received: shape \(16, 9, 9, 3\)\."]),
    case("unbatched_dataset", qat(), tf.data.Dataset.from_tensor_slices(images()),
         patterns=[r"input 'img' expects shape \(None, 8, 8, 3\) .* Received: shape \(8, 8, 3\) "
                   r"\(tf\.data element_spec\)\. It looks like single samples without the batch axis: .*"
                   r"`dataset\.batch\(32\)`"]),
    case("wrongly_shaped_generator_batch", qat(), lambda: iter([images(4, shape=(8, 8, 1))]),
         patterns=[r"input 'img' expects shape \(None, 8, 8, 3\) .* Received: shape \(4, 8, 8, 1\) "
                   r"in calibration batch 0"]),
    case("too_few_inputs", qat(), np.zeros((8, 4), "float32"), model=two_input_model,
         patterns=[r"one array per model input: the model has 2 input\(s\) \['a', 'b'\]\. Received: 1 array"]),
    case("missing_named_input", qat(), {"a": np.zeros((8, 4), "float32")}, model=dict_input_model,
         patterns=[r"every model input by name \['a', 'b'\]\. Received: a dict with keys \['a'\], missing \['b'\]"]),
    case("strings_as_data", qat(), np.full((4, 8, 8, 3), "x"),
         patterns=[r"Calibration data must be numeric: input 'img' expects float32\. Received: dtype <U1"]),
    case("nan_in_data", qat(), with_nan(),
         patterns=[r"Calibration data must be finite .* Received: 1 NaN/Inf value\(s\) in input 'img' "
                   r"in calibration batch 0\. Clean the data"]),
    case("inf_in_a_later_batch", qat(), batches_then_inf,
         patterns=[r"1 NaN/Inf value\(s\) in input 'img' in calibration batch 1"]),
    case("dataset_not_iterable", qat(), 5,
         patterns=[r"`dataset` must be a tf\.data\.Dataset, an \(x, y\) tuple of arrays, an array of inputs "
                   r"or an iterable of batches\. Received: dataset=int"]),
    case("infinite_dataset_with_a_huge_sample_count", qat(init_samples=10**9),
         tf.data.Dataset.from_tensor_slices(images()).batch(4).repeat(),
         patterns=[r"Calibration data from an infinite tf\.data\.Dataset must be read for at most 100000 samples, "
                   r"or initialization would not end\. Received: an infinite dataset \(`repeat\(\)` without a "
                   r"count\) and a config that asks for 1000000000 samples \(quantization: 1000000000.*"
                   r"`dataset\.take\(n\)`"]),
    # Models keras_compress cannot transform.
    case("not_a_model", qat(), model=a_dense_layer, error=TypeError,
         patterns=[r"`model` must be a keras\.Model\. Received: model=Dense"]),
    case("subclass_without_config", qat(), model=unconfigurable_subclass,
         patterns=[r"kc\.compress works on a copy of a subclassed model", r"Let `NeedsArguments\.__init__` take `\*\*kwargs`.*`get_config\(\)`"]),
    case("filter_pruning_of_a_subclass", {"compression": {"algorithm": "filter_pruning"}}, model=subclassed_model,
         patterns=[r"filter_pruning needs the model's graph", r"Functional API"]),
    case("unbuilt_sequential", qat(), model=unbuilt_sequential,
         patterns=[r"Sequential model '.*' has no input shape\..*`input_info\.sample_size`"]),
]  # fmt: skip


def bn_model():
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    out = L.ReLU(name="relu")(x)
    return keras.Model(inp, out, name="conv_bn")


@pytest.mark.parametrize("make_model,config,data,error,patterns", ERROR_CASES)
def test_bad_input_raises_a_clear_error_and_changes_nothing(make_model, config, data, error, patterns, tmp_path,
                                                            monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)  # where a `touch KC_PWNED` would land
    model = make_model()
    before, files = snapshot(model), file_state(config)
    dataset = data() if callable(data) else data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kc.ConfigWarning)
        with pytest.raises(error) as info:
            kc.compress(model, config, dataset=dataset)

    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message, re.M), f"{pattern!r} not in:\n{message}"
    assert_unchanged(model, before)
    assert file_state(config) == files
    assert not (tmp_path / PWNED).exists()


def test_config_errors_list_every_problem_with_its_path():
    with pytest.raises(kc.ConfigError) as info:
        kc.load_config(BAD / "wrong_types.json")
    assert sorted(path for path, _ in info.value.errors) == [
        "compression.initializer.range.num_init_samples",
        "compression.weights.bits",
        "compression.weights.per_channel",
    ]


# ---------------------------------------------------------------------------------------------------
# The corpus of bad input with a documented fallback


def outputs(model, x):
    return np.asarray(model(x, training=False))


def test_model_with_no_compressible_layers_warns_and_is_returned_working(caplog):
    inp = keras.Input((8, 8, 3), name="img")
    x = L.ReLU(name="relu")(inp)
    x = L.Flatten(name="flat")(x)
    out = L.Activation("softmax", name="softmax")(x)
    model = keras.Model(inp, out, name="no_weights")
    before, x = snapshot(model), images()

    with caplog.at_level(logging.WARNING, logger="keras_compress"):
        compressed, ctrl = kc.compress(model, qat(), dataset=x)

    assert "kc.compress found no layer to compress in model 'no_weights'" in caplog.text
    figures = ctrl.statistics().figures()
    assert figures["quantization/weight_quantizers"] == 0 and figures["quantization/activation_quantizers"] == 0
    np.testing.assert_array_equal(outputs(compressed, x), outputs(model, x))
    assert_unchanged(model, before)


def test_model_with_only_unsupported_weight_layers_warns_and_lists_them(caplog):
    inp = keras.Input((8, 8, 3), name="img")
    x = L.BatchNormalization(name="bn")(inp)
    x = L.LayerNormalization(name="ln")(x)
    out = L.PReLU(name="prelu")(x)
    model = keras.Model(inp, out, name="norms")

    with caplog.at_level(logging.WARNING, logger="keras_compress"):
        compressed, ctrl = kc.compress(model, magnitude(), dataset=images())

    assert "found no layer to compress in model 'norms'" in caplog.text and "prelu" in caplog.text
    assert ctrl.statistics().skipped() == {"prelu": "magnitude_sparsity: layer type PReLU is not supported"}
    assert ctrl.statistics().figures()["magnitude_sparsity/sparsified_layers"] == 0


class ChannelScale(L.Layer):
    """A custom layer with a vector weight: nothing to compress, like a norm's gain."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


class ChannelMix(L.Layer):
    """A custom layer that multiplies by a kernel of its own (and does not opt in)."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], input_shape[-1]), initializer="identity")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)


class DoubledConv2D(L.Conv2D):
    """A Conv2D subclass with its own call."""

    def call(self, inputs):
        return super().call(inputs) * 2.0


def test_custom_layers_are_left_as_they_are_and_listed():
    inp = keras.Input((8, 8, 3), name="img")
    x = DoubledConv2D(4, 3, name="doubled")(inp)
    x = ChannelScale(name="scale")(x)
    x = ChannelMix(name="mix")(x)
    x = L.Flatten(name="flat")(x)
    model = keras.Model(inp, L.Dense(2, name="fc")(x), name="custom")
    model.get_layer("scale").scale.assign([0.5, -1.0, 2.0, 3.0])
    before = snapshot(model)

    compressed, ctrl = kc.compress(model, qat(), dataset=images())

    assert type(compressed.get_layer("doubled")) is DoubledConv2D
    assert type(compressed.get_layer("scale")) is ChannelScale and type(compressed.get_layer("mix")) is ChannelMix
    np.testing.assert_array_equal(np.asarray(compressed.get_layer("scale").scale), [0.5, -1.0, 2.0, 3.0])
    # The vector-weighted layer has nothing to compress (as a norm): not listed; the kernel one is.
    assert ctrl.statistics().skipped() == {
        "doubled": "quantization: subclass of Conv2D that overrides call()",
        "mix": "quantization: layer type ChannelMix computes with weights of its own: it runs in float "
        "(opt it in with `compressible_weights()` and `call_with_weights()`, see docs/custom_layers.md)",
    }
    assert isinstance(compressed.get_layer("fc"), kc.QuantizeWrapper)
    assert_unchanged(model, before)


def lambda_model():
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Lambda(lambda t: tf.nn.relu6(t) * 2.0, name="double_relu6")(inp)  # uses a module global
    x = L.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = L.Flatten(name="flat")(x)
    return keras.Model(inp, L.Dense(2, name="fc")(x), name="with_lambda")


@pytest.mark.parametrize("config", [qat(), magnitude(sparsity_target=0.5)], ids=["qat", "sparsity"])
def test_lambda_layer_is_left_as_it_is_and_listed(config):
    model, x = lambda_model(), images()
    before = snapshot(model)

    compressed, ctrl = kc.compress(model, config, dataset=x)

    assert compressed.get_layer("double_relu6").function is model.get_layer("double_relu6").function
    name = next(iter(ctrl.statistics().sections))
    assert ctrl.statistics().skipped() == {
        "double_relu6": f"{name}: Lambda layer: its Python function is left as it is (not quantized or sparsified)"
    }
    stripped = ctrl.strip()
    np.testing.assert_allclose(outputs(stripped, x), outputs(compressed, x), atol=1e-5)
    assert np.isfinite(outputs(stripped, x)).all()
    assert_unchanged(model, before)


@pytest.mark.openvino
def test_lambda_model_trains_and_exports_to_openvino(tmp_path):
    import openvino as ov

    model, x = lambda_model(), images(32)
    compressed, ctrl = kc.compress(model, qat(), dataset=x)
    compressed.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    compressed.fit(x, np.arange(32) % 2, epochs=1, batch_size=16, verbose=0, callbacks=ctrl.callbacks())

    xml = kc.export(compressed, tmp_path / "lambda")
    got = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    np.testing.assert_allclose(got, outputs(compressed, x), atol=1e-3)


def test_lambda_model_needs_safe_mode_false_to_load_as_in_keras(tmp_path):
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Lambda(lambda t: t * 2.0, name="double")(inp)  # re-created from bytecode: no module globals
    model = keras.Model(inp, L.Conv2D(2, 3, name="conv")(x))
    compressed, _ = kc.compress(model, qat(), dataset=images())
    path = tmp_path / "lambda.keras"
    compressed.save(path)
    with pytest.raises(ValueError, match="Lambda"):
        keras.saving.load_model(path)  # Keras' own rule for Python lambdas, not keras_compress'
    loaded = keras.saving.load_model(path, safe_mode=False)
    np.testing.assert_allclose(outputs(loaded, images()), outputs(compressed, images()), atol=1e-6)


def test_layer_quantized_by_keras_is_left_as_it_is_and_listed():
    model = small_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.quantize("int8")  # Keras' post-training quantization of the Dense layer
    compressed, ctrl = kc.compress(model, qat(), dataset=images())
    assert ctrl.statistics().skipped() == {"fc": "quantization: already quantized by Keras (mode 'int8')"}
    assert isinstance(compressed.get_layer("conv"), kc.QuantizeWrapper)


@pytest.mark.openvino
def test_mixed_bfloat16_model_compresses_trains_and_exports(tmp_path):
    import openvino as ov

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        inp = keras.Input((8, 8, 3), name="img")
        x = L.Conv2D(4, 3, name="conv")(inp)
        x = L.BatchNormalization(name="bn")(x)
        x = L.ReLU(name="relu")(x)
        x = L.Flatten(name="flat")(x)
        out = L.Dense(2, name="fc", dtype="float32")(x)
        model = keras.Model(inp, out, name="bf16")
    finally:
        keras.config.set_dtype_policy(previous)
    x, y = images(32), np.arange(32) % 2
    before = snapshot(model)

    compressed, ctrl = kc.compress(model, qat(bn_samples=16), dataset=x)
    compressed.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = compressed.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=ctrl.callbacks())

    # Fake quantization runs in float32 inside the wrappers; the other layers keep the policy.
    assert compressed.get_layer("conv").dtype_policy.name == "float32"
    assert compressed.get_layer("bn").dtype_policy.name == "mixed_bfloat16"
    assert all(v.dtype == "float32" for v in compressed.get_layer("relu_quantizer").weights)
    assert np.isfinite(history.history["loss"]).all()
    assert ctrl.statistics().figures()["quantization/weight_quantizers"] == 2
    xml = kc.export(compressed, tmp_path / "bf16")
    got = ov.Core().compile_model(str(xml), "CPU")(x)[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, outputs(compressed, x), atol=0.05)
    assert_unchanged(model, before)


def test_one_shot_generator_is_read_once_for_bn_adaptation_and_range_init():
    model, x = bn_model(), images(16)
    config = qat(bn_samples=16, init_samples=16)
    batches = (x[i : i + 4] for i in range(0, 16, 4))  # BN adaptation and range init both read it

    from_generator, _ = kc.compress(model, config, dataset=batches)
    from_array, _ = kc.compress(model, config, dataset=x)

    # Equal batches: the running average of the batch means is the mean over all 16 samples.
    np.testing.assert_allclose(np.asarray(from_generator.get_layer("bn").moving_mean),
                               np.asarray(from_array.get_layer("bn").moving_mean), atol=1e-5)  # fmt: skip
    ranges = quantizer_ranges(from_generator)
    assert ranges and all(not np.allclose(v, 1.0) for k, v in ranges.items() if "activation_scale" in k)
    for key, value in quantizer_ranges(from_array).items():
        np.testing.assert_allclose(ranges[key], value, rtol=1e-6, err_msg=key)


def test_a_list_of_x_y_batches_is_calibration_data():
    x = images(16)
    batches = [(x[i : i + 4], np.zeros(4)) for i in range(0, 16, 4)]
    compressed, _ = kc.compress(small_cnn(), qat(init_samples=16), dataset=batches)
    reference, _ = kc.compress(small_cnn(), qat(init_samples=16), dataset=x)
    np.testing.assert_allclose(quantizer_ranges_of(compressed), quantizer_ranges_of(reference), rtol=1e-6)
    arrays = [x[i : i + 4] for i in range(0, 16, 4)]  # a list of input batches of a one-input model
    compressed, _ = kc.compress(small_cnn(), qat(init_samples=16), dataset=arrays)
    np.testing.assert_allclose(quantizer_ranges_of(compressed), quantizer_ranges_of(reference), rtol=1e-6)


def quantizer_ranges_of(model):
    return [float(np.asarray(v).max()) for layer in model.layers if isinstance(layer, kc.FakeQuantize)
            for v in layer.weights]  # fmt: skip


def test_an_infinite_dataset_is_read_for_the_samples_asked_and_said_so(caplog):
    data = tf.data.Dataset.from_tensor_slices(images()).batch(4).repeat()
    with caplog.at_level(logging.INFO, logger="keras_compress"):
        kc.compress(small_cnn(), qat(init_samples=24), dataset=data)
    assert "Calibration data is an infinite tf.data.Dataset: initialization reads its first 24 samples" in caplog.text


def test_unsupported_option_falls_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="keras_compress"):
        compressed, ctrl = kc.compress(small_cnn(), qat(activations={"per_channel": True}), dataset=images())
    assert "activations.per_channel is not supported: activations are quantized per tensor" in caplog.text
    assert ctrl.statistics().figures()["quantization/activation_quantizers"] == 2


def test_pytorch_only_and_unknown_top_level_keys_are_kept_with_a_warning():
    with pytest.warns(kc.ConfigWarning) as record:
        config = kc.load_config({**qat(), "compression_lr_multiplier": 2.0, "batch_size": 32})
    messages = " | ".join(str(w.message) for w in record)
    assert "compression_lr_multiplier: PyTorch-only in NNCF" in messages
    assert "'batch_size'" in messages and config.extra == {"batch_size": 32}


MOVEMENT_PARAMS = {"warmup_start_epoch": 1, "warmup_end_epoch": 3, "importance_regularization_factor": 0.1}
#: Keys a config may hold that keras_compress accepts and does not act on: each one is a ConfigWarning.
NOTICE_CASES = [
    pytest.param({"compression": {"algorithm": "movement_sparsity",
                                  "params": {**MOVEMENT_PARAMS, "enable_structured_masking": True}}},
                 r"^compression\.params\.enable_structured_masking: PyTorch-only in NNCF, it has no effect",
                 id="enable_structured_masking"),
    pytest.param({"compression": {"algorithm": "filter_pruning", "params": {"prune_batch_norms": False}}},
                 r"^compression\.params\.prune_batch_norms: false has no effect: keras_compress always removes the "
                 r"BatchNormalization channels of pruned filters", id="prune_batch_norms_false"),
    pytest.param(qat(initializer={"precision": {"type": "manual", "bitwidth_assignment_mode": "strict"}}),
                 r"^compression\.initializer\.precision\.bitwidth_assignment_mode: PyTorch-only in NNCF, it has no "
                 r"effect", id="bitwidth_assignment_mode"),
    pytest.param(qat(initializer={"precision": {"type": "hawq", "bitwidth_per_scope": [[4, "conv"]]}}),
                 r"bitwidth_per_scope: used only by `type: manual`; it has no effect with type 'hawq'",
                 id="bitwidth_per_scope_with_hawq"),
    pytest.param({**qat(), "bootstrapNAS": {"training": {"batchnorm_adaptation": {}}}},
                 r"^bootstrapNAS: NAS is not supported", id="bootstrapNAS"),
    pytest.param({**qat(), "input_info": {"sample_size": [1, 3, 224, 224]}},
                 r"^input_info\.sample_size: \[1, 3, 224, 224\] looks like PyTorch's channels-first layout \(NCHW\); "
                 r"keras_compress reads it channels-last .*For channels-last write \[1, 224, 224, 3\]",
                 id="nchw_sample_size"),
    pytest.param({**qat(), "input_info": {"sample_size": [1, 8, 8, 3], "filler": "random"}},
                 r"^input_info\.filler: NNCF's setting for generated inputs; keras_compress reads only `sample_size`",
                 id="input_info_filler"),
    pytest.param(BAD / "nncf_torch_manual_precision.json",
                 r"^compression\.initializer\.precision\.bitwidth_per_scope: 17 scope\(s\) are NNCF PyTorch names",
                 id="nncf_pytorch_scopes"),
]  # fmt: skip


@pytest.mark.parametrize("config,pattern", NOTICE_CASES)
def test_accepted_but_unused_keys_are_notices(config, pattern):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kc.load_config(config)
    messages = [str(w.message) for w in record if issubclass(w.category, kc.ConfigWarning)]
    assert any(re.search(pattern, m) for m in messages), messages


def test_nchw_sample_size_of_an_unbuilt_sequential_is_read_channels_last_after_the_notice():
    model = keras.Sequential([L.Conv2D(4, 3, name="conv"), L.Flatten(), L.Dense(2, name="fc")])
    with pytest.warns(kc.ConfigWarning, match="looks like PyTorch's channels-first layout"):
        compressed, _ = kc.compress(model, {**qat(), "input_info": {"sample_size": [1, 3, 16, 16]}})
    assert tuple(compressed.inputs[0].shape) == (None, 3, 16, 16)  # as the notice says


def test_activation_scopes_may_name_inputs_layers_and_quantizers(caplog):
    config = qat(scope_overrides={"activations": {"img": {"bits": 6}, "conv_quantizer": {"bits": 5},
                                                  "flat": {"bits": 3}}},
                 initializer={"range": [{"num_init_samples": 8, "target_scopes": ["img", "conv"]}],
                              "precision": {"bitwidth_per_scope": [[4, "conv"], [7, "img|OUTPUT"]]}},
                 activations={"unified_scale_ops": [["conv", "{re}f.*"]]})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="keras_compress"):
        compressed, _ = kc.compress(small_cnn(), config, dataset=images())
    bits = {layer.name: layer.spec.bits for layer in compressed.layers if isinstance(layer, kc.FakeQuantize)}
    assert bits == {"img_quantizer": 7, "conv_quantizer": 5}  # bitwidth_per_scope first, then scope_overrides
    assert compressed.get_layer("conv").quantizers["kernel"].spec.bits == 4
    # `flat` is a layer, but its output is not quantized (fc's input quantizer sits after conv): a notice.
    assert ("compression.scope_overrides.activations.flat: 'flat' names no activation quantizer of model 'small' "
            "(its quantizers: conv_quantizer, img_quantizer); it has no effect") in caplog.text


def test_config_log_dir_is_where_the_callbacks_write_tensorboard_scalars(tmp_path):
    log_dir = tmp_path / "tb"
    compressed, ctrl = kc.compress(small_cnn(), {**magnitude(sparsity_target=0.5), "log_dir": str(log_dir)})
    compressed.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    compressed.fit(images(), np.arange(16) % 2, epochs=1, verbose=0, callbacks=ctrl.callbacks())
    assert any(p.name.startswith("events.out.tfevents") for p in log_dir.rglob("*"))


def test_no_calibration_data_warns_and_keeps_default_ranges(caplog):
    with caplog.at_level(logging.WARNING, logger="keras_compress"):
        compressed, ctrl = kc.compress(small_cnn(), qat())
    assert "kc.compress got no `dataset`: quantizer range init and BatchNorm adaptation are skipped" in caplog.text
    assert np.isfinite(outputs(compressed, images())).all()


def test_strip_of_the_original_model_is_refused():
    model = small_cnn()
    _, ctrl = kc.compress(model, qat(), dataset=images())
    with pytest.raises(ValueError, match="has no keras_compress layers: pass the model returned by `kc.compress`"):
        ctrl.strip(model)


# ---------------------------------------------------------------------------------------------------
# Export to a path that cannot be written, and other bad export arguments


@pytest.fixture(scope="module")
def compressed_small():
    return kc.compress(small_cnn(), qat(), dataset=images())


def test_export_under_a_regular_file_names_the_path_and_changes_nothing(compressed_small, tmp_path):
    model = compressed_small[0]
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("user data")
    before, files = snapshot(model), tree_state(tmp_path)

    for fmt in ("openvino", "saved_model"):
        target = blocker / "out" / "model"
        with pytest.raises(OSError) as info:
            kc.export(model, target, format=fmt)
        assert str(blocker / "out") in str(info.value) and "Cannot create the export directory" in str(info.value)

    assert tree_state(tmp_path) == files  # the file is intact and nothing was created
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "args,error,pattern",
    [
        (dict(format="onnx"), ValueError,
         r"`format` must be one of \('openvino', 'saved_model'\)\. Received: format='onnx'"),
        (dict(model="model.keras"), TypeError, r"`model` must be a keras\.Model\. Received: str"),
    ],
    ids=["unknown_format", "model_is_a_path"],
)  # fmt: skip
def test_bad_export_arguments_raise_and_write_nothing(compressed_small, tmp_path, args, error, pattern):
    args = {"model": compressed_small[0], "path": tmp_path / "m", **args}
    with pytest.raises(error, match=pattern):
        kc.export(**args)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# Degenerate statistics end to end: a constant activation and an all-zero conv channel


def degenerate_model():
    """conv1 has an all-zero output channel; `dead` (zero kernel, bias -1, ReLU) outputs a constant 0
    that `conv3` reads; `const` (zero kernel, bias 3) outputs a constant 3 that `fc` reads."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    d = L.Conv2D(4, 1, activation="relu", name="dead")(x)
    d = L.Conv2D(4, 3, padding="same", name="conv3")(d)
    z = L.Conv2D(4, 3, padding="same", name="conv2")(x)
    x = L.Add(name="add")([d, z])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(4, name="const")(x)
    out = L.Dense(2, name="fc")(x)
    model = keras.Model(inp, out, name="degenerate")
    conv1 = model.get_layer("conv1")
    kernel, bias = (np.asarray(w) for w in conv1.weights)
    kernel[..., 0], bias[0] = 0.0, 0.0
    conv1.set_weights([kernel, bias])
    model.get_layer("dead").set_weights([np.zeros((1, 1, 4, 4)), -np.ones(4)])
    model.get_layer("const").set_weights([np.zeros((4, 4)), np.full(4, 3.0)])
    return model


def quantizer_ranges(model):
    values = {}
    for layer in iter_layers(model):
        if isinstance(layer, (kc.FakeQuantize, kc.QuantizeWrapper)):
            for v in layer.weights:
                if any(k in v.path for k in ("scale", "input_low", "input_range")):
                    values[v.path] = np.asarray(v)
    return values


RANGE_TYPES = ["min_max", "mean_min_max", "mixed_min_max", "threesigma", "percentile", "mean_percentile"]


@pytest.mark.parametrize("preset", ["performance", "mixed"])
@pytest.mark.parametrize("range_type", RANGE_TYPES)
def test_degenerate_statistics_give_finite_positive_ranges(range_type, preset):
    model, x = degenerate_model(), images(32)
    config = qat(init_samples=32, preset=preset, initializer={
        "range": {"type": range_type, "num_init_samples": 32},
        "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}})  # fmt: skip

    compressed, ctrl = kc.compress(model, config, dataset=x)

    ranges = quantizer_ranges(compressed)
    assert any("dead_quantizer" in k for k in ranges) and any("const_quantizer" in k for k in ranges)
    for path, value in ranges.items():
        assert np.isfinite(value).all(), path
        if "scale" in path or "input_range" in path:
            assert (np.abs(value) > 0).all(), path
    conv1_scale = np.asarray(compressed.get_layer("conv1").quantizers["kernel"].variables["scale"]).ravel()
    assert conv1_scale[0] == pytest.approx(1e-4)  # the all-zero channel
    y = outputs(compressed, x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, outputs(model, x), atol=0.1)


@pytest.mark.parametrize("preset", ["performance", "mixed"])
@pytest.mark.openvino
def test_degenerate_statistics_train_and_export_to_openvino(preset, tmp_path):
    import openvino as ov

    model, x = degenerate_model(), images(32)
    compressed, ctrl = kc.compress(model, qat(init_samples=32, preset=preset), dataset=x)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    compressed.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
    history = compressed.fit(x, np.arange(32) % 2, epochs=2, batch_size=16, verbose=0, callbacks=ctrl.callbacks())
    assert np.isfinite(history.history["loss"]).all()
    for path, value in quantizer_ranges(compressed).items():
        assert np.isfinite(value).all(), path

    xml = kc.export(compressed, tmp_path / "degenerate")
    got = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, outputs(compressed, x), atol=1e-3)


# ---------------------------------------------------------------------------------------------------
# Distributed: MirroredStrategy over two logical CPUs against one device, in a fresh process

@pytest.fixture(scope="module")
def distributed_results():
    # The program runs with this tree's keras_compress, the CPU split into two logical devices.
    result = run_program("mirrored.py", timeout=300, env={"CUDA_VISIBLE_DEVICES": ""})
    return results_of(result.stdout)


def assert_close_dicts(a, b, atol, rtol=1e-4, exact=()):
    assert sorted(a) == sorted(b)
    for key in a:
        if any(part in key for part in exact):
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
        else:
            np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=atol, rtol=rtol, err_msg=key)


def test_mirrored_qat_matches_one_device(distributed_results):
    one, mirrored = distributed_results["qat"]["one_device"], distributed_results["qat"]["mirrored"]
    assert mirrored["replicas"] == 2 and mirrored["replica_spread"] == 0.0
    # Range init in the strategy scope: the same scales on every replica and as on one device.
    assert_close_dicts(one["initial"], mirrored["initial"], atol=0, rtol=0)
    assert_close_dicts(one["final"], mirrored["final"], atol=1e-4, exact=("signed",))
    np.testing.assert_allclose(one["loss"], mirrored["loss"], rtol=1e-4)
    # Float-level weight differences (all-reduce order) may move a value across a rounding boundary
    # of the fake-quant grid: that output then differs by about one quantization step.
    diff = np.abs(np.asarray(one["outputs"]) - np.asarray(mirrored["outputs"]))
    assert np.median(diff) < 1e-5 and np.mean(diff < 1e-4) > 0.9 and diff.max() < 1e-2
    assert one["figures"] == mirrored["figures"]


def test_mirrored_magnitude_sparsity_matches_one_device(distributed_results):
    one, mirrored = distributed_results["sparsity"]["one_device"], distributed_results["sparsity"]["mirrored"]
    assert mirrored["replicas"] == 2 and mirrored["replica_spread"] == 0.0
    assert_close_dicts(one["initial"], mirrored["initial"], atol=0, rtol=0)
    # Masks and levels are decided on the host from the synchronized weights: exactly equal.
    assert_close_dicts(one["final"], mirrored["final"], atol=1e-5, exact=("mask",))
    assert one["levels"] == mirrored["levels"] and len(one["levels"]) == 12
    assert one["levels"][-1] == pytest.approx(0.6) and one["levels"][0] < one["levels"][-1]
    assert one["figures"] == mirrored["figures"]
    np.testing.assert_allclose(one["outputs"], mirrored["outputs"], atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Safe loading


def test_compressed_models_load_in_safe_mode(tmp_path):
    model, x = small_cnn(), images()
    config = {"compression": [qat()["compression"], magnitude(sparsity_target=0.5)["compression"]]}
    compressed, ctrl = kc.compress(model, config, dataset=x)
    for stage, m in (("compressed", compressed), ("stripped", ctrl.strip())):
        path = tmp_path / f"{stage}.keras"
        m.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        np.testing.assert_allclose(outputs(loaded, x), outputs(m, x), atol=1e-6)
        with zipfile.ZipFile(path) as archive:
            saved_config = archive.read("config.json").decode()
        assert "keras_compress>QuantizeWrapper" in saved_config and "__lambda__" not in saved_config


def test_config_loading_never_evaluates_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("config loading evaluated code")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kc.ConfigWarning)
        config = kc.load_config(BAD / "code_in_values.json")
        text = (BAD / "code_in_values.json").read_text()
        assert kc.load_config(text) == config  # the same document as a JSON string
    monkeypatch.undo()

    assert config.extra["model"] == "__import__('os').system('touch KC_PWNED')"  # data, kept as written
    assert config.extra["__class__"] == {"__reduce__": ["os.system", ["touch KC_PWNED"]]}
    assert config.log_dir == "$(touch KC_PWNED)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kc.ConfigWarning)
        compressed, _ = kc.compress(small_cnn(), config, dataset=images())
    assert isinstance(compressed.get_layer("conv"), kc.QuantizeWrapper)
    assert not (tmp_path / PWNED).exists()
