"""Tests of keras_compress.config: NNCF's sample configs, broken configs, warnings, defaults, fuzzing."""

import copy
import json
import pickle
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_compress.config import (
    CompressionConfig,
    ConfigError,
    ConfigWarning,
    FilterPruningConfig,
    MagnitudeSparsityConfig,
    QuantizationConfig,
    RBSparsityConfig,
    json_schema,
    load_config,
)

#: NNCF's 34 TensorFlow sample configs, copied unchanged with their license (Apache-2.0).
NNCF_CONFIGS = Path(__file__).resolve().parent / "fixtures" / "nncf_tf_configs"
NNCF_FILES = sorted(NNCF_CONFIGS.rglob("*.json"))
# Top-level keys of NNCF's config schema; every other top-level key belongs to a training script.
NNCF_TOP_LEVEL = {"input_info", "target_device", "compression", "accuracy_aware_training", "log_dir",
                  "compression_lr_multiplier", "disable_shape_matching"}

MOVEMENT = {"algorithm": "movement_sparsity",
            "params": {"warmup_start_epoch": 1, "warmup_end_epoch": 4, "importance_regularization_factor": 0.01}}


def load_quietly(source):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return load_config(source)


def load_nncf(relative_path):
    return load_quietly(NNCF_CONFIGS / relative_path)


def sections_of(raw):
    compression = raw.get("compression", [])
    return [compression] if isinstance(compression, dict) else compression


# ---------------------------------------------------------------------------------------------------
# NNCF's TensorFlow sample configs


def test_all_34_nncf_sample_configs_are_found():
    assert len(NNCF_FILES) == 34


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=str(p.relative_to(NNCF_CONFIGS))) for p in NNCF_FILES],
)
def test_nncf_sample_config_loads_and_maps_every_key(path):
    raw = json.loads(path.read_text())
    with pytest.warns(ConfigWarning) as record:
        config = load_config(path)

    assert config.algorithm_names() == [section["algorithm"] for section in sections_of(raw)]
    training_keys = [key for key in raw if key not in NNCF_TOP_LEVEL]
    assert training_keys and config.extra == {key: raw[key] for key in training_keys}
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and all(f"'{key}'" in messages[0] for key in training_keys)
    assert [info.sample_size for info in config.input_info] == [raw["input_info"]["sample_size"]]
    if "accuracy_aware_training" in raw:
        assert config.accuracy_aware_training.mode == raw["accuracy_aware_training"]["mode"]
    for name in config.algorithm_names():
        assert name in config.summary()
    assert load_quietly(config.to_dict()) == config
    assert load_quietly(json.dumps(config.to_dict())) == config


def test_pruning_int8_config_values():
    config = load_nncf("classification/pruning_quantization/resnet50_imagenet_pruning_geometric_median_int8.json")
    pruning, quantization = config.compression
    assert isinstance(pruning, FilterPruningConfig) and isinstance(quantization, QuantizationConfig)
    assert pruning.pruning_init == 0.1
    assert pruning.params.pruning_target == 0.4
    assert pruning.params.pruning_steps == 15
    assert pruning.params.schedule == "exponential"
    assert pruning.params.filter_importance == "geometric_median"
    assert quantization.initializer.batchnorm_adaptation.num_bn_adaptation_samples == 2048
    assert quantization.weights.per_channel is False
    assert (quantization.weights.mode, quantization.activations.mode) == ("symmetric", "symmetric")
    assert config.extra["batch_size"] == 320 and config.extra["optimizer"]["type"] == "sgd"


def test_mixed_preset_per_channel_config_values():
    quantization = load_nncf("classification/quantization/mobilenet_v3_large_imagenet_int8.json").compression[0]
    assert quantization.preset == "mixed"
    assert quantization.weights.per_channel is True and quantization.activations.per_channel is False
    assert (quantization.weights.mode, quantization.activations.mode) == ("symmetric", "asymmetric")
    assert quantization.weights.bits == quantization.activations.bits == 8


def test_accuracy_aware_configs_values():
    early = load_nncf("classification/quantization/resnet50_int8_accuracy_aware.json")
    assert early.compression[0].initializer.range.num_init_samples == 850
    assert early.accuracy_aware_training.mode == "early_exit"
    assert early.accuracy_aware_training.params.maximal_relative_accuracy_degradation == 1.0
    assert early.accuracy_aware_training.params.maximal_total_epochs == 100

    adaptive = load_nncf("classification/sparsity/resnet50_imagenet_magnitude_sparsity_accuracy_aware.json")
    sparsity = adaptive.compression[0]
    assert isinstance(sparsity, MagnitudeSparsityConfig)
    assert sparsity.sparsity_init == 0.1 and sparsity.params.schedule == "multistep"
    assert sparsity.params.multistep_steps == [5, 10, 15, 20, 25]
    assert sparsity.params.multistep_sparsity_levels == [0.1, 0.15, 0.20, 0.25, 0.30, 0.35]
    params = adaptive.accuracy_aware_training.params
    assert (params.initial_training_phase_epochs, params.patience_epochs) == (100, 40)
    assert params.maximal_total_epochs == 10000


def test_rb_sparsity_configs_values():
    rb = load_nncf("classification/sparsity/mobilenet_v2_imagenet_rb_sparsity.json").compression[0]
    assert isinstance(rb, RBSparsityConfig)
    assert rb.params.schedule == "exponential"  # RB's default schedule, not magnitude's
    assert (rb.sparsity_init, rb.params.sparsity_target) == (0.01, 0.5)
    assert (rb.params.sparsity_target_epoch, rb.params.sparsity_freeze_epoch) == (5, 10)

    config = load_nncf("classification/sparsity_quantization/mobilenet_v3_small_imagenet_rb_sparsity_int8.json")
    rb, quantization = config.compression
    assert rb.params.schedule == "multistep" and rb.params.sparsity_freeze_epoch == 50
    assert rb.params.multistep_sparsity_levels[-1] == 0.42
    assert quantization.activations.mode == "asymmetric"


def test_ignored_scopes_and_fp32_baseline_configs():
    mask_rcnn = load_nncf("segmentation/quantization/mask_rcnn_coco_int8.json").compression[0]
    assert len(mask_rcnn.ignored_scopes) == 30
    assert "{re}.*tf.math.subtract.*" in mask_rcnn.ignored_scopes and "box-predict" in mask_rcnn.ignored_scopes

    baseline = load_nncf("classification/resnet50_imagenet.json")
    assert baseline.compression == [] and baseline.accuracy_aware_training is None
    assert baseline.extra["eval_only"] is True and baseline.extra["model"] == "ResNet50"


# ---------------------------------------------------------------------------------------------------
# Broken configs: every problem is reported with its JSON path


def quantization(**keys):
    return {"compression": {"algorithm": "quantization", **keys}}


def sparsity(algorithm="magnitude_sparsity", sparsity_init=None, **params):
    section = {"algorithm": algorithm, "params": params}
    if sparsity_init is not None:
        section["sparsity_init"] = sparsity_init
    return {"compression": [section]}


BROKEN = [
    ("malformed_json", '{"compression": {"algorithm": "quantization",}}', "$", "invalid JSON"),
    ("nan_in_json", '{"compression": {"algorithm": "rb_sparsity", "sparsity_init": NaN}}', "$", "NaN"),
    ("duplicate_key", '{"epochs": 1, "epochs": 2}', "$", "'epochs' appears twice"),
    ("list_at_top_level", "[{\"algorithm\": \"quantization\"}]", "$", "must be a JSON object"),
    ("python_list_source", [{"algorithm": "quantization"}], "$", "Received: list"),
    ("int_source", 42, "$", "Received: int"),
    ("file_not_found", "no/such/config.json", "$", "not found"),
    ("unknown_algorithm", {"compression": {"algorithm": "quantisation"}}, "compression.algorithm",
     "did you mean 'quantization'?"),
    ("missing_algorithm", {"compression": [{"params": {}}]}, "compression[0].algorithm", "missing"),
    ("section_not_object", {"compression": [{"algorithm": "quantization"}, 5]}, "compression[1]",
     "must be a JSON object (received 5)"),
    ("misspelt_param", {"compression": [{"algorithm": "quantization"},
                                        {"algorithm": "filter_pruning", "params": {"pruning_targte": 0.3}}]},
     "compression[1].params.pruning_targte", "did you mean 'pruning_target'?"),
    ("misspelt_section_key", quantization(activation={"bits": 8}), "compression.activation",
     "did you mean 'activations'?"),
    ("misspelt_accuracy_aware_key", {"accuracy_aware_training": {"mode": "early_exit",
                                                                 "params": {"maximal_total_epoch": 5}}},
     "accuracy_aware_training.params.maximal_total_epoch", "did you mean 'maximal_total_epochs'?"),
    ("pruning_target_too_big", {"compression": [{"algorithm": "quantization"},
                                                {"algorithm": "filter_pruning", "params": {"pruning_target": 1.5}}]},
     "compression[1].params.pruning_target", "must be < 1 (received 1.5)"),
    ("negative_sparsity_target", sparsity(sparsity_target=-0.2), "compression[0].params.sparsity_target",
     "must be >= 0 (received -0.2)"),
    ("sparsity_init_above_target", sparsity(sparsity_init=0.7, sparsity_target=0.5), "compression[0].sparsity_init",
     "must be <= `sparsity_target` (0.5) (received 0.7)"),
    ("bits_12", quantization(weights={"bits": 12}), "compression.weights.bits",
     "`bits` must be between 2 and 8. Received: bits=12"),
    ("bits_wrong_type", quantization(activations={"bits": "8"}), "compression.activations.bits",
     'must be an integer (received "8")'),
    ("per_channel_not_bool", quantization(weights={"per_channel": "yes"}), "compression.weights.per_channel",
     "must be true or false"),
    ("bad_mode", quantization(activations={"mode": "asym"}), "compression.activations.mode",
     "did you mean 'asymmetric'?"),
    ("bad_preset", quantization(preset="performence"), "compression.preset", "did you mean 'performance'?"),
    ("bad_range_type", quantization(initializer={"range": {"type": "minmax"}}), "compression.initializer.range.type",
     "did you mean 'min_max'?"),
    ("negative_num_init_samples", quantization(initializer={"range": {"num_init_samples": -5}}),
     "compression.initializer.range.num_init_samples", "must be >= 0 (received -5)"),
    ("per_scope_range_bad_group", quantization(initializer={"range": [{"type": "min_max"},
                                                                      {"target_quantizer_group": "weight"}]}),
     "compression.initializer.range[1].target_quantizer_group", "did you mean 'weights'?"),
    ("negative_bn_samples", quantization(initializer={"batchnorm_adaptation": {"num_bn_adaptation_samples": -1}}),
     "compression.initializer.batchnorm_adaptation.num_bn_adaptation_samples", "must be >= 0"),
    ("precision_bits_16", quantization(initializer={"precision": {"type": "hawq", "bits": [4, 16]}}),
     "compression.initializer.precision.bits[1]", "Received: bits=16"),
    ("two_quantization_sections", {"compression": [{"algorithm": "quantization"}, {"algorithm": "quantization"}]},
     "compression[1].algorithm", "'quantization' appears more than once"),
    ("two_sparsity_algorithms", {"compression": [{"algorithm": "magnitude_sparsity"}, {"algorithm": "rb_sparsity"}]},
     "compression[1].algorithm", "only one sparsity algorithm"),
    ("bad_schedule_name", sparsity(schedule="polinomial"), "compression[0].params.schedule",
     "did you mean 'polynomial'?"),
    ("bad_pruning_schedule", {"compression": {"algorithm": "filter_pruning", "params": {"schedule": "linear"}}},
     "compression.params.schedule", "'baseline', 'exponential', 'exponential_with_bias'"),
    ("multistep_length_mismatch", sparsity(schedule="multistep", multistep_steps=[2, 4],
                                           multistep_sparsity_levels=[0.2, 0.4]),
     "compression[0].params.multistep_sparsity_levels", "2 steps need 3 levels; received 2 levels"),
    ("multistep_steps_not_increasing", sparsity(multistep_steps=[4, 2], multistep_sparsity_levels=[0.1, 0.2, 0.3]),
     "compression[0].params.multistep_steps", "strictly increasing"),
    ("rb_local_mode", sparsity("rb_sparsity", sparsity_level_setting_mode="local"),
     "compression[0].params.sparsity_level_setting_mode", "supports only 'global'"),
    ("both_accuracy_bounds", {"accuracy_aware_training": {"mode": "early_exit", "params": {
        "maximal_relative_accuracy_degradation": 1.0, "maximal_absolute_accuracy_degradation": 0.5}}},
     "accuracy_aware_training.params", "only one of"),
    ("bad_accuracy_aware_mode", {"accuracy_aware_training": {"mode": "early-exit"}}, "accuracy_aware_training.mode",
     "did you mean 'early_exit'?"),
    ("adaptive_with_quantization_only", {"compression": {"algorithm": "quantization"},
                                         "accuracy_aware_training": {"mode": "adaptive_compression_level"}},
     "accuracy_aware_training.mode", "needs exactly one filter_pruning or sparsity algorithm"),
    ("movement_without_params", {"compression": {"algorithm": "movement_sparsity"}}, "compression.params", "missing"),
    ("movement_warmup_order", {"compression": {**MOVEMENT, "params": {**MOVEMENT["params"], "warmup_end_epoch": 0}}},
     "compression.params.warmup_end_epoch", "must be > `warmup_start_epoch`"),
    ("movement_block_without_factors", {"compression": {**MOVEMENT, "sparse_structure_by_scopes": [
        {"mode": "block", "target_scopes": "{re}.*dense.*"}]}},
     "compression.sparse_structure_by_scopes[0].sparse_factors", "required when `mode` is 'block'"),
    ("invalid_scope_regex", quantization(ignored_scopes=["conv1", "{re}conv[0-9"]), "compression.ignored_scopes",
     "not a valid regular expression"),
    ("scopes_wrong_type", quantization(target_scopes=5), "compression.target_scopes", "string or an array"),
    ("bad_scope_override_group", quantization(scope_overrides={"weight": {}}), "compression.scope_overrides.weight",
     "did you mean 'weights'?"),
    ("bad_target_device", {"target_device": "cpu"}, "target_device", "'CPU'"),
    ("input_info_wrong_type", {"input_info": {"sample_size": "1x224x224x3"}}, "input_info.sample_size",
     "must be a JSON array"),
    ("compression_wrong_type", {"compression": "quantization"}, "compression", "must be a JSON array"),
    ("error_index_counts_ignored_algorithms", {"compression": [{"algorithm": "knowledge_distillation", "type": "mse"},
                                                               {"algorithm": "quantization", "bits": 8}]},
     "compression[1].bits", "unknown key 'bits'"),
]


@pytest.mark.parametrize("source, path, message", [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_broken_config_raises_config_error_naming_the_path(source, path, message):
    with pytest.raises(ConfigError) as info:
        load_quietly(source)
    assert any(error_path.startswith(path) and message in error_message
               for error_path, error_message in info.value.errors), str(info.value)


def test_broken_corpus_is_large_enough():
    assert len(BROKEN) >= 25


def test_every_problem_is_listed_one_per_line():
    source = {"target_device": "cpu", "compression": [
        {"algorithm": "quantization", "weights": {"bits": 1}, "activations": {"per_chanel": True}},
        {"algorithm": "filter_pruning", "params": {"pruning_target": 2}},
    ]}
    with pytest.raises(ConfigError) as info:
        load_quietly(source)
    paths = [path for path, _ in info.value.errors]
    assert set(paths) == {"target_device", "compression[0].weights.bits", "compression[0].activations.per_chanel",
                          "compression[1].params.pruning_target"}
    assert str(info.value).splitlines() == [f"{path}: {message}" for path, message in info.value.errors]


def test_config_error_is_a_value_error_and_pickles():
    with pytest.raises(ValueError) as info:
        load_quietly(quantization(weights={"bits": 12}))
    error = pickle.loads(pickle.dumps(info.value))
    assert isinstance(error, ConfigError) and error.errors == info.value.errors


def test_malformed_and_unreadable_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"compression": [}')
    with pytest.raises(ConfigError, match=r"\$: invalid JSON: .* line 1 column"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"^\$: "):
        load_config(binary)


def test_nan_in_a_dict_source_is_an_error():
    with pytest.raises(ConfigError) as info:
        load_quietly(sparsity(power=float("nan")))
    assert info.value.errors == [("compression[0].params.power", "must be a finite number (received NaN)")]


# ---------------------------------------------------------------------------------------------------
# Warnings: nothing is dropped silently


def test_training_script_keys_are_kept_and_reported_once():
    source = {"model": "ResNet50", "batch_size": 32, "optimizer": {"type": "adam"}, "compresion": [],
              "compression": {"algorithm": "quantization"}}
    with pytest.warns(ConfigWarning) as record:
        config = load_config(source)
    assert len(record) == 1
    message = str(record[0].message)
    assert "not used by keras_compress" in message
    assert all(f"'{key}'" in message for key in ("model", "batch_size", "optimizer"))
    assert "did you mean 'compression'?" in message
    assert config.extra == {"model": "ResNet50", "batch_size": 32, "optimizer": {"type": "adam"}, "compresion": []}
    assert "batch_size" in config.summary()


def test_pytorch_only_keys_are_stored_with_a_warning_each():
    source = {
        "compression_lr_multiplier": 2.0,
        "compression": [
            {"algorithm": "quantization", "export_to_onnx_standard_ops": True, "weights": {"logarithm_scale": True},
             "params": {"activations_quant_start_epoch": 2, "base_lr": 0.01}},
            {"algorithm": "filter_pruning", "params": {"interlayer_ranking_type": "learned_ranking",
                                                       "legr_params": {"generations": 10}}},
        ],
    }
    with pytest.warns(ConfigWarning) as record:
        config = load_config(source)
    messages = [str(w.message) for w in record]
    expected = ["compression_lr_multiplier", "compression[0].export_to_onnx_standard_ops", "compression[0].params",
                "compression[0].weights.logarithm_scale", "compression[1].params.interlayer_ranking_type",
                "compression[1].params.legr_params"]
    assert len(messages) == len(expected)
    for path in expected:
        assert sum(message.startswith(f"{path}: ") and "no effect" in message for message in messages) == 1
    quant, pruning = config.compression
    assert config.compression_lr_multiplier == 2.0
    assert quant.export_to_onnx_standard_ops is True and quant.weights.logarithm_scale is True
    assert quant.params.activations_quant_start_epoch == 2 and quant.params.base_lr == 0.01
    assert pruning.params.legr_params == {"generations": 10}


def test_pytorch_only_algorithms_are_kept_aside():
    source = {"compression": [{"algorithm": "knowledge_distillation", "type": "softmax", "temperature": 3},
                              {"algorithm": "rb_sparsity"}, {"algorithm": "const_sparsity"}]}
    with pytest.warns(ConfigWarning) as record:
        config = load_config(source)
    assert config.algorithm_names() == ["rb_sparsity"]
    assert config.ignored_algorithms == [source["compression"][0], source["compression"][2]]
    messages = [str(w.message) for w in record]
    assert any(m.startswith("compression[0]: algorithm 'knowledge_distillation'") for m in messages)
    assert any(m.startswith("compression[2]: algorithm 'const_sparsity'") for m in messages)
    assert config.get_algorithm("knowledge_distillation") is None
    assert load_quietly(config.to_dict()) == config


def test_clean_config_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config({"input_info": {"sample_size": [1, 8, 8, 1]}, "compression": {"algorithm": "quantization"}})


# ---------------------------------------------------------------------------------------------------
# Defaults, normalization, presets


def test_defaults_match_nncf():
    config = load_quietly({"compression": [{"algorithm": "quantization"}, {"algorithm": "filter_pruning"},
                                           {"algorithm": "magnitude_sparsity"}]})
    assert config.target_device == "ANY" and config.input_info == [] and config.accuracy_aware_training is None
    q, p, m = config.compression
    assert (q.preset, q.quantize_inputs, q.quantize_outputs, q.overflow_fix) == ("performance", True, False, "enable")
    assert (q.weights.bits, q.weights.per_channel, q.weights.signed) == (8, False, None)
    assert (q.initializer.range.type, q.initializer.range.num_init_samples) == ("mixed_min_max", 256)
    assert (q.initializer.range.params.min_percentile, q.initializer.range.params.max_percentile) == (0.1, 99.9)
    assert q.initializer.batchnorm_adaptation.num_bn_adaptation_samples is None  # not set: 2000 for the model
    assert config.batchnorm_adaptation_samples() == 2000
    assert q.initializer.precision is None and q.validate_scopes is True and q.ignored_scopes == []
    assert p.pruning_init == 0.0
    assert (p.params.schedule, p.params.pruning_target, p.params.pruning_steps) == ("exponential", 0.5, 100)
    assert (p.params.num_init_steps, p.params.filter_importance, p.params.pruning_flops_target) == (0, "L2", None)
    assert (p.params.all_weights, p.params.prune_first_conv, p.params.prune_downsample_convs) == (False,) * 3
    assert p.params.prune_batch_norms is True
    assert (m.sparsity_init, m.params.schedule, m.params.sparsity_target) == (0.0, "polynomial", 0.5)
    assert (m.params.sparsity_target_epoch, m.params.sparsity_freeze_epoch) == (90, 100)
    assert (m.params.multistep_steps, m.params.multistep_sparsity_levels) == ([90], [0.1, 0.5])
    assert (m.params.patience, m.params.power, m.params.concave) == (1, 0.9, True)
    assert (m.params.weight_importance, m.params.sparsity_level_setting_mode) == ("normed_abs", "global")
    assert RBSparsityConfig().params.schedule == "exponential"


def test_precision_accuracy_aware_and_movement_defaults():
    q = load_quietly(quantization(initializer={"precision": {"type": "hawq"}})).compression[0]
    precision = q.initializer.precision
    assert (precision.bits, precision.num_data_points, precision.iter_number) == ([4, 8], 100, 200)
    assert (precision.tolerance, precision.compression_ratio) == (1e-4, 1.5)
    with pytest.raises(ConfigError, match=r"compression\.initializer\.precision\.type: .autoq' .* is not "
                                          r"supported; use 'hawq' .* or 'manual'"):
        load_quietly(quantization(initializer={"precision": {"type": "autoq"}}))

    aa = load_quietly({"accuracy_aware_training": {"mode": "early_exit"}}).accuracy_aware_training.params
    assert (aa.maximal_relative_accuracy_degradation, aa.maximal_absolute_accuracy_degradation) == (1.0, None)
    assert (aa.maximal_total_epochs, aa.initial_training_phase_epochs, aa.patience_epochs) == (10000, 5, 3)
    assert (aa.initial_compression_rate_step, aa.compression_rate_step_reduction_factor) == (0.1, 0.5)
    assert (aa.minimal_compression_rate_step, aa.lr_reduction_factor) == (0.025, 0.5)
    assert (aa.metric, aa.metric_mode, aa.uncompressed_model_accuracy) == ("val_accuracy", "max", None)
    absolute = load_quietly({"accuracy_aware_training": {"mode": "early_exit", "params": {
        "maximal_absolute_accuracy_degradation": 0.02}}}).accuracy_aware_training.params
    assert absolute.maximal_relative_accuracy_degradation is None

    movement = load_quietly({"compression": MOVEMENT}).compression[0]
    assert (movement.params.power, movement.params.final_importance_threshold) == (3.0, 0.0)
    assert movement.params.enable_structured_masking is True and movement.sparse_structure_by_scopes == []


@pytest.mark.parametrize(
    "preset, weights, activations, expected",
    [
        ("performance", {}, {}, ("symmetric", "symmetric")),
        ("mixed", {}, {}, ("symmetric", "asymmetric")),
        ("mixed", {}, {"mode": "symmetric"}, ("symmetric", "symmetric")),
        ("performance", {"mode": "asymmetric"}, {}, ("asymmetric", "symmetric")),
    ],
)
def test_preset_fills_modes_and_explicit_mode_wins(preset, weights, activations, expected):
    q = load_quietly(quantization(preset=preset, weights=weights, activations=activations)).compression[0]
    assert (q.weights.mode, q.activations.mode) == expected


def test_single_object_and_list_forms_are_normalized():
    single = load_quietly({"input_info": {"sample_size": [1, 4]},
                           "compression": {"algorithm": "quantization", "ignored_scopes": "dense"}})
    listed = load_quietly({"input_info": [{"sample_size": [1, 4]}],
                           "compression": [{"algorithm": "quantization", "ignored_scopes": ["dense"]}]})
    assert single == listed
    assert single.compression[0].ignored_scopes == ["dense"] and single.input_info[0].type == "float"


def test_error_path_follows_the_single_or_list_form():
    for compression, path in [({"algorithm": "quantization", "preset": 1}, "compression.preset"),
                              ([{"algorithm": "quantization", "preset": 1}], "compression[0].preset")]:
        with pytest.raises(ConfigError) as info:
            load_config({"compression": compression})
        assert [p for p, _ in info.value.errors] == [path]


def test_sources_path_str_json_dict_and_config(tmp_path):
    source = {"compression": {"algorithm": "filter_pruning", "params": {"pruning_target": 0.3}}}
    file = tmp_path / "pruning.json"
    file.write_text(json.dumps(source))
    original = copy.deepcopy(source)
    configs = [load_config(source), load_config(file), load_config(str(file)), load_config(json.dumps(source)),
               load_config("\n  " + json.dumps(source))]
    assert all(config == configs[0] for config in configs)
    assert source == original  # the input dict is not modified
    assert load_config(configs[0]) is configs[0]
    assert configs[0].get_algorithm("filter_pruning").params.pruning_target == 0.3


# ---------------------------------------------------------------------------------------------------
# to_dict, json_schema, summary


def test_to_dict_round_trips_a_rich_config():
    source = {
        "input_info": [{"sample_size": [1, 32, 32, 3]}, {"sample_size": [1, 10], "type": "long", "keyword": "ids"}],
        "target_device": "CPU",
        "log_dir": "logs",
        "epochs": 3,
        "compression": [
            {"algorithm": "filter_pruning", "pruning_init": 0.1, "params": {"pruning_flops_target": 0.3,
                                                                            "schedule": "baseline"}},
            {"algorithm": "quantization", "preset": "mixed", "ignored_scopes": ["{re}.*head.*"],
             "initializer": {"range": [{"type": "percentile", "params": {"min_percentile": 1, "max_percentile": 99},
                                        "target_quantizer_group": "activations"}],
                             "precision": {"type": "manual", "bitwidth_per_scope": [[4, "conv1"], [8, "dense"]],
                                           "average_bits": 6}},
             "activations": {"signed": False, "unified_scale_ops": [["add_1", "add_2"]]},
             "scope_overrides": {"weights": {"conv1": {"bits": 4, "initializer": {"range": {"type": "min_max"}}}}}},
            {"algorithm": "knowledge_distillation", "type": "mse"},
        ],
        "accuracy_aware_training": {"mode": "adaptive_compression_level",
                                    "params": {"maximal_absolute_accuracy_degradation": 0.01, "metric": "val_auc"}},
    }
    config = load_quietly(source)
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["epochs"] == 3 and data["compression"][-1] == {"algorithm": "knowledge_distillation", "type": "mse"}
    assert load_quietly(data) == config
    q = config.get_algorithm("quantization")
    assert q.initializer.precision.bitwidth_per_scope == [(4, "conv1"), (8, "dense")]
    assert q.scope_overrides["weights"]["conv1"].bits == 4


def test_json_schema_describes_every_algorithm():
    schema = json_schema()
    assert isinstance(schema, dict) and "compression" in schema["properties"]
    mapping = schema["properties"]["compression"]["items"]["discriminator"]["mapping"]
    assert set(mapping) == {"quantization", "filter_pruning", "magnitude_sparsity", "rb_sparsity", "movement_sparsity"}
    assert json.loads(json.dumps(schema)) == schema


def test_summary_mentions_each_algorithm_and_its_settings():
    config = load_quietly({
        "model": "ResNet50",
        "compression": [{"algorithm": "filter_pruning", "params": {"pruning_target": 0.4,
                                                                   "filter_importance": "geometric_median"}},
                        {"algorithm": "quantization", "weights": {"per_channel": True, "bits": 4}}],
        "accuracy_aware_training": {"mode": "adaptive_compression_level",
                                    "params": {"maximal_relative_accuracy_degradation": 0.5}},
    })
    text = config.summary()
    for fragment in ("filter_pruning", "40%", "geometric_median", "quantization", "4-bit symmetric per-channel",
                     "BatchNorm adaptation: 2000 samples", "adaptive_compression_level", "0.5% relative", "model"):
        assert fragment in text
    for section in (MOVEMENT, {"algorithm": "rb_sparsity"}):
        assert section["algorithm"] in load_quietly({"compression": section}).summary()


def test_python_construction_matches_loading():
    config = CompressionConfig(compression=[{"algorithm": "quantization", "preset": "mixed"}], batch_size=8)
    assert config.extra == {"batch_size": 8}
    assert config == load_quietly({"compression": {"algorithm": "quantization", "preset": "mixed"}, "batch_size": 8})
    assert QuantizationConfig(preset="mixed").activations.mode == "asymmetric"


# ---------------------------------------------------------------------------------------------------
# Fuzzing: load_config returns a config or raises ConfigError, nothing else


def _vocabulary(schema):
    keys, words = set(), set()

    def walk(node):
        if isinstance(node, dict):
            keys.update(node.get("properties", {}))
            words.update(value for value in node.get("enum", []) if isinstance(value, str))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return sorted(keys), sorted(words)


KEYS, WORDS = _vocabulary(json_schema())
KEYS += ["model", "batch_size", "optimizer", "{re}.*conv.*", "temperature"]
WORDS += ["knowledge_distillation", "const_sparsity", "quantisation", "{re}(", "{re}conv.*", "dense"]
ALGORITHM_WORDS = ["quantization", "filter_pruning", "magnitude_sparsity", "rb_sparsity", "movement_sparsity",
                   "knowledge_distillation", "const_sparsity", "sparsity"]

scalars = (st.none() | st.booleans() | st.integers(-3, 300) | st.integers()
           | st.floats(-2, 120, allow_nan=False) | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from(WORDS) | st.text(max_size=6))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=16)
sections = st.builds(lambda algorithm, rest: {**rest, "algorithm": algorithm},
                     st.sampled_from(ALGORITHM_WORDS), st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6))
random_configs = st.builds(
    lambda top, rest: {**rest, **top},
    st.fixed_dictionaries({}, optional={
        "compression": sections | st.lists(sections, max_size=4) | json_values,
        "accuracy_aware_training": st.fixed_dictionaries(
            {"mode": st.sampled_from(["early_exit", "adaptive_compression_level"])},
            optional={"params": st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)}) | json_values,
        "input_info": json_values,
        "target_device": st.sampled_from(WORDS) | json_values,
    }),
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4))

SEEDS = [json.loads(path.read_text()) for path in NNCF_FILES] + [
    {"compression": [{"algorithm": "quantization", "preset": "mixed", "initializer": {
        "range": [{"type": "percentile", "target_scopes": "conv"}], "precision": {"type": "hawq", "bits": [4, 8]}},
        "scope_overrides": {"activations": {"{re}.*add.*": {"mode": "asymmetric"}}}},
        {"algorithm": "filter_pruning", "params": {"pruning_target": 0.3}}],
     "accuracy_aware_training": {"mode": "adaptive_compression_level", "params": {}}},
    {"compression": {**MOVEMENT, "sparse_structure_by_scopes": [{"mode": "block", "sparse_factors": [2, 2],
                                                                 "target_scopes": ["dense"]}]}},
    {"compression": {"algorithm": "rb_sparsity", "params": {"schedule": "multistep"}}},
]


def _paths(node, prefix=()):
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, (*prefix, key))


@st.composite
def mutated_configs(draw):
    config = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(config))))
        if not path:
            continue
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(json_values)
    return config


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_configs | mutated_configs())
def test_fuzzed_config_loads_or_raises_config_error(source):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        try:
            config = load_config(source)
        except ConfigError as error:
            assert error.errors and all(isinstance(p, str) and p and isinstance(m, str) and m for p, m in error.errors)
            return
        assert isinstance(config, CompressionConfig)
        assert load_config(json.dumps(config.to_dict())) == config
        assert isinstance(config.summary(), str)
