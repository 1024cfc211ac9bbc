"""Quantization-aware training of a digits CNN, exported to an INT8 OpenVINO IR.

Trains an FP32 CNN on sklearn's load_digits, compresses it with 8-bit QAT, fine-tunes it with
a plain `model.fit`, exports both models to OpenVINO IR and prints the test accuracies.

    python examples/digits_qat.py [--output out/digits]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.demo import build_digits_cnn, evaluate_ir, load_digits_split  # noqa: E402

CONFIG = {
    "input_info": {"sample_size": [1, 8, 8, 1]},
    "compression": {
        "algorithm": "quantization",
        "weights": {"per_channel": True},
        "initializer": {
            "range": {"num_init_samples": 512},
            "batchnorm_adaptation": {"num_bn_adaptation_samples": 512},
        },
    },
}


def main(output="out/digits_qat", epochs=30, qat_epochs=5):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = build_digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
    fp32 = model.evaluate(x_test, y_test, verbose=0)[1]

    compressed, ctrl = kc.compress(model, CONFIG, dataset=(x_train, y_train))
    compressed.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
    compressed.fit(x_train, y_train, batch_size=64, epochs=qat_epochs, callbacks=ctrl.callbacks(), verbose=0)
    qat = compressed.evaluate(x_test, y_test, verbose=0)[1]
    print(ctrl.statistics())

    int8_ir = evaluate_ir(kc.export(compressed, f"{output}/int8"), x_test, y_test)
    print(f"FP32 Keras accuracy:      {fp32:.4f}")
    print(f"QAT Keras accuracy:       {qat:.4f} ({100 * (qat - fp32):+.2f} points)")
    print(f"INT8 OpenVINO accuracy:   {int8_ir:.4f} ({100 * (int8_ir - fp32):+.2f} points)")
    return {"fp32": fp32, "qat": qat, "int8_ir": int8_ir}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="out/digits_qat")
    main(parser.parse_args().output)
