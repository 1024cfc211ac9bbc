"""An NNCF TensorFlow sample config, unchanged, applied to a small Keras 3 model.

`examples/configs/mobilenet_v2_imagenet_rb_sparsity_int8.json` is NNCF's own sample config
(github.com/openvinotoolkit/nncf, Apache License 2.0, from
`examples/tensorflow/classification/configs/sparsity_quantization/` before NNCF removed its
TensorFlow backend): RB sparsity to 52% by epoch 10, frozen at epoch 15, plus 8-bit
quantization with per-tensor weights. keras_compress loads it as it is; the keys of NNCF's
training script (`model`, `batch_size`, `optimizer`, ...) are kept in `config.extra`. This
example applies it to the digits CNN (sklearn's load_digits) instead of an ImageNet
MobileNetV2, takes the learning rate from the file's optimizer section, fine-tunes, and
exports an INT8 OpenVINO IR.

    python examples/nncf_config.py [--epochs 12] [--output out/nncf_config]
"""

import argparse
import os
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.demo import build_digits_cnn, evaluate_ir, load_digits_split  # noqa: E402

NNCF_CONFIG = Path(__file__).resolve().parent / "configs" / "mobilenet_v2_imagenet_rb_sparsity_int8.json"


def main(epochs=12, output="out/nncf_config"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", kc.ConfigWarning)
        config = kc.load_config(NNCF_CONFIG)
    for warning in caught:
        print(f"ConfigWarning: {warning.message}")
    print(f"Algorithms:               {', '.join(config.algorithm_names())}")
    print(f"Training-script keys:     {', '.join(sorted(config.extra))}")
    rb = config.get_algorithm("rb_sparsity")
    print(f"RB sparsity:              {rb.sparsity_init} -> {rb.params.sparsity_target} by epoch "
          f"{rb.params.sparsity_target_epoch}, frozen at {rb.params.sparsity_freeze_epoch}")  # fmt: skip
    lr = config.extra["optimizer"]["schedule_params"]["values"][0]

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = build_digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=30, verbose=0)
    fp32 = model.evaluate(x_test, y_test, verbose=0)[1]

    compressed, ctrl = kc.compress(model, config, dataset=(x_train, y_train))
    compressed.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    compressed.fit(x_train, y_train, batch_size=64, epochs=epochs, callbacks=ctrl.callbacks(), verbose=0)
    tuned = compressed.evaluate(x_test, y_test, verbose=0)[1]
    level = ctrl.statistics().figures()["rb_sparsity/sparsity_level"]
    int8_ir = evaluate_ir(kc.export(compressed, f"{output}/int8"), x_test, y_test)

    print(f"FP32 Keras accuracy:      {fp32:.4f}")
    print(f"Sparsity level reached:   {level:.4f} after {epochs} epochs")
    print(f"Compressed Keras accuracy: {tuned:.4f} ({100 * (tuned - fp32):+.2f} points)")
    print(f"INT8 OpenVINO accuracy:   {int8_ir:.4f} ({100 * (int8_ir - fp32):+.2f} points)")
    return {"fp32": fp32, "level": level, "tuned": tuned, "int8_ir": int8_ir}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs (the file's target epoch is 10)")
    parser.add_argument("--output", default="out/nncf_config")
    args = parser.parse_args()
    main(args.epochs, args.output)
