"""Filter pruning + 8-bit QAT of a small ResNet, exported to a smaller, faster INT8 OpenVINO IR.

Trains a ResNet-style CNN (3 residual stages) on generated 32x32 images of 10 noisy class
patterns, compresses it with one config that prunes 40% of the filters (geometric median,
exponential schedule, as NNCF's ResNet50 sample; downsampling convolutions too, since this
small network has few others) and quantizes to 8 bits, fine-tunes with a plain `model.fit`,
and exports both models. The pruned filters are physically removed from
the IR. Prints accuracy, parameters, FLOPs, IR size and latency of both IRs.

    python examples/resnet_pruning_int8.py [--output out/resnet_pruning] [--epochs 4]
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.benchmark import benchmark_models, compile_ir, runtime_precisions  # noqa: E402
from keras_compress.demo import evaluate_ir  # noqa: E402

CONFIG = {
    "compression": [
        {
            "algorithm": "filter_pruning",
            "pruning_init": 0.1,
            "params": {"schedule": "exponential", "pruning_target": 0.4, "pruning_steps": 2,
                       "filter_importance": "geometric_median", "prune_downsample_convs": True},
        },
        {
            "algorithm": "quantization",
            "weights": {"per_channel": True},
            "initializer": {"range": {"num_init_samples": 256},
                            "batchnorm_adaptation": {"num_bn_adaptation_samples": 256}},
        },
    ]
}  # fmt: skip


def make_data(n, seed, noise=2.0):
    """Images of 10 fixed smooth patterns, randomly scaled and shifted, plus Gaussian noise."""
    patterns = np.kron(np.random.default_rng(1234).normal(size=(10, 8, 8, 3)), np.ones((1, 4, 4, 1)))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = patterns[y] * rng.uniform(0.6, 1.4, (n, 1, 1, 1))
    x = np.stack([np.roll(image, tuple(s), axis=(0, 1)) for image, s in zip(x, rng.integers(-4, 5, (n, 2)))])
    return (x + rng.normal(0, noise, x.shape)).astype("float32"), y.astype("int32")


def build_resnet(widths=(16, 32, 64)):
    def conv_bn(x, filters, kernel, strides, name):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
        return layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)

    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.ReLU(name="stem_relu")(conv_bn(inputs, widths[0], 3, 1, "stem"))
    for i, filters in enumerate(widths):
        strides = 1 if i == 0 else 2
        y = layers.ReLU(name=f"s{i}_relu")(conv_bn(x, filters, 3, strides, f"s{i}_a"))
        y = conv_bn(y, filters, 3, 1, f"s{i}_b")
        if strides != 1:
            x = conv_bn(x, filters, 1, strides, f"s{i}_proj")
        x = layers.ReLU(name=f"s{i}_out")(layers.Add(name=f"s{i}_add")([x, y]))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="resnet_cnn")


def ir_weights_kib(xml):
    return Path(xml).with_suffix(".bin").stat().st_size / 1024


def ir_conv_weights(xml):
    """Number of convolution weights in an IR (what filter removal shrinks)."""
    import openvino as ov

    ops = ov.Core().read_model(str(xml)).get_ops()
    return sum(int(np.prod(op.input(1).get_shape())) for op in ops if op.get_type_name() == "Convolution")


def main(output="out/resnet_pruning", epochs=4, fp32_epochs=5):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = make_data(1500, 0), make_data(500, 1)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = build_resnet()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=fp32_epochs, verbose=0)
    fp32 = model.evaluate(x_test, y_test, verbose=0)[1]

    compressed, ctrl = kc.compress(model, CONFIG, dataset=(x_train, y_train))
    compressed.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    compressed.fit(x_train, y_train, batch_size=64, epochs=epochs, callbacks=ctrl.callbacks(), verbose=0)
    tuned = compressed.evaluate(x_test, y_test, verbose=0)[1]
    stats = ctrl.statistics()
    print(stats)
    try:
        print(f"Statistics plot:          {stats.plot(Path(output) / 'statistics.png')}")
    except ImportError:
        print("Statistics plot:          skipped (pip install matplotlib)")

    fp32_xml = kc.export(model, f"{output}/fp32")
    int8_xml = kc.export(compressed, f"{output}/pruned_int8")
    fp32_ir, int8_ir = evaluate_ir(fp32_xml, x_test, y_test, "f32"), evaluate_ir(int8_xml, x_test, y_test)
    compiled = {"fp32": compile_ir(fp32_xml, "f32"), "int8": compile_ir(int8_xml)}
    latency = benchmark_models(compiled, batch_size=1, rounds=5)
    precisions = sorted({p for _, p in runtime_precisions(compiled["int8"])})

    figures = stats.figures()
    print(f"FP32 Keras accuracy:      {fp32:.4f}")
    print(f"Compressed Keras accuracy: {tuned:.4f} ({100 * (tuned - fp32):+.2f} points)")
    print(f"FP32 IR accuracy:         {fp32_ir:.4f}")
    print(f"Pruned INT8 IR accuracy:  {int8_ir:.4f} ({100 * (int8_ir - fp32_ir):+.2f} points)")
    print(f"Filters pruned:           {figures['filter_pruning/pruned_filters']} "
          f"({figures['filter_pruning/filter_pruning_rate']:.0%} of the prunable ones)")  # fmt: skip
    print(f"Parameters kept:          {figures['filter_pruning/params_ratio']:.2f}")
    print(f"FLOPs kept:               {figures['filter_pruning/flops_ratio']:.2f}")
    print(f"IR weights (.bin):        {ir_weights_kib(fp32_xml):.1f} KiB -> {ir_weights_kib(int8_xml):.1f} KiB")
    conv_fp32, conv_int8 = ir_conv_weights(fp32_xml), ir_conv_weights(int8_xml)
    print(f"IR convolution weights:   {conv_fp32} -> {conv_int8} ({conv_int8 / conv_fp32:.2f})")
    print(f"INT8 runtime precisions:  {', '.join(precisions)}")
    speedup = latency["fp32"]["latency_ms"] / latency["int8"]["latency_ms"]
    print(f"Latency (batch 1):        {latency['fp32']['latency_ms']:.3f} ms -> "
          f"{latency['int8']['latency_ms']:.3f} ms ({speedup:.2f}x)")  # fmt: skip
    return {"fp32": fp32, "tuned": tuned, "fp32_ir": fp32_ir, "int8_ir": int8_ir, "speedup": speedup}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="out/resnet_pruning")
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs")
    args = parser.parse_args()
    main(args.output, args.epochs)
