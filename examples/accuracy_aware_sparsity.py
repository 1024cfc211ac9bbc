"""Accuracy-aware magnitude sparsity: the highest sparsity that keeps accuracy within 1%.

Trains an FP32 digits CNN on sklearn's load_digits, then fine-tunes it with magnitude
sparsity under `accuracy_aware_training` (mode `adaptive_compression_level`): the level starts
at 30%, rises after every epoch whose validation accuracy is within 1% (relative) of the FP32
model's, backs off and takes smaller steps when it is not. `fit` is the ordinary Keras `fit`;
the search is done by `ctrl.callbacks()`. Prints the search table and the result.

    python examples/accuracy_aware_sparsity.py [--epochs 12]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.demo import build_digits_cnn, load_digits_split  # noqa: E402
from keras_compress.statistics import format_table  # noqa: E402


def make_config(epochs):
    return {
        "accuracy_aware_training": {
            "mode": "adaptive_compression_level",
            "params": {
                "maximal_relative_accuracy_degradation": 1.0,  # percent of the FP32 accuracy
                "initial_training_phase_epochs": 2,
                "patience_epochs": 2,
                "maximal_total_epochs": epochs,
            },
        },
        "compression": {
            "algorithm": "magnitude_sparsity",
            "sparsity_init": 0.3,
            "params": {"schedule": "polynomial", "power": 1, "sparsity_target": 0.95, "sparsity_target_epoch": 3},
            "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}},
        },
    }


def main(epochs=12):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, y_val) = load_digits_split()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = build_digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=30, verbose=0)
    fp32 = model.evaluate(x_val, y_val, verbose=0)[1]

    compressed, ctrl = kc.compress(model, make_config(epochs))
    compressed.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    compressed.fit(
        x_train, y_train, batch_size=64, epochs=epochs, verbose=0,
        validation_data=(x_val, y_val),
        callbacks=ctrl.callbacks(validation_data=(x_val, y_val)),  # measures the FP32 reference
    )  # fmt: skip
    final = compressed.evaluate(x_val, y_val, verbose=0)[1]
    level = ctrl.statistics().figures()["magnitude_sparsity/sparsity_level"]

    rows = [[r["epoch"], f"{r['level']:.3f}", f"{r['metric']:.4f}", r["within_bound"]] for r in ctrl.accuracy_aware_history]
    print(format_table(["epoch", "level", "val_accuracy", "within bound"], rows))
    print(f"FP32 accuracy:            {fp32:.4f}")
    print(f"Accuracy bound:           {fp32 * 0.99:.4f}")
    print(f"Final sparsity level:     {level:.4f}")
    print(f"Final accuracy:           {final:.4f} ({100 * (final - fp32):+.2f} points)")
    return {"fp32": fp32, "final": final, "level": level}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="maximal total epochs of the search")
    main(parser.parse_args().epochs)
