"""Small builders shared by the test modules, and the runner of the child programs in `tests/programs/`
(conftest.py puts this folder on `sys.path`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = Path(__file__).resolve().parent / "programs"


def run_program(name, *args, cwd=None, env=None, timeout=600, check=True):
    """Runs `tests/programs/<name>` in a new Python process (this interpreter) with `args` as its arguments.

    The child inherits the environment conftest.py set up (this tree first on `PYTHONPATH`), updated with `env`.

    Args:
        name: the program's file name, e.g. `"resume.py"`.
        *args: its command-line arguments (converted with `str`).
        cwd: its working directory.
        env: variables to set (a value of `None` removes the variable).
        timeout: seconds before it is killed.
        check: assert that it exited with status 0 (showing the end of its stderr otherwise).

    Returns:
        The `subprocess.CompletedProcess`, with text `stdout` and `stderr`.
    """
    environment = {**os.environ}
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = str(value)
    result = subprocess.run([sys.executable, str(PROGRAMS / name), *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, env=environment, timeout=timeout)  # fmt: skip
    if check:
        assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def results_of(stdout, prefix="RESULTS "):
    """The JSON a program printed on its line starting with `prefix`."""
    return json.loads(next(line for line in stdout.splitlines() if line.startswith(prefix))[len(prefix):])


def quantization_config(bn_samples=0, init_samples=32, **section):
    """A config with one quantization section: per-channel weights, no overflow fix, and the
    given numbers of BN-adaptation and range-init samples; `section` adds or replaces keys."""
    q = {
        "algorithm": "quantization",
        "weights": {"per_channel": True},
        "overflow_fix": "disable",
        "initializer": {
            "range": {"num_init_samples": init_samples},
            "batchnorm_adaptation": {"num_bn_adaptation_samples": bn_samples},
        },
    }
    q.update(section)
    return {"compression": q}


def data(shape, seed=0):
    """Standard-normal float32 data of `shape`."""
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def conv_bn_add_model():
    """Conv-BN-ReLU-ZeroPadding-MaxPool-Conv-BN-Add-ReLU-GAP-Dense on 16x16x3."""
    import keras

    L = keras.layers
    inp = keras.Input((16, 16, 3), name="img")
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    r1 = L.ReLU(name="relu1")(x)
    x = L.ZeroPadding2D(1, name="pad")(r1)
    x = L.MaxPooling2D(3, strides=1, name="pool")(x)
    x = L.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Add(name="add")([x, r1])
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(4, name="fc")(x)
    return keras.Model(inp, out, name="conv_bn_add")


def trained_digits_cnn(epochs=30, seed=0):
    """The demo's digits CNN trained from `seed` (Adam 1e-3, batch 64), compiled with accuracy.

    Returns:
        `model, (x_train, y_train), (x_test, y_test)`.
    """
    import keras

    from keras_compress.demo import build_digits_cnn, load_digits_split

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    model = build_digits_cnn()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
    return model, (x_train, y_train), (x_test, y_test)


def quantization_step(fake_quantize):
    """The step of a per-tensor activation quantizer (`kc.FakeQuantize`): its range over its intervals."""
    low, high = (float(np.asarray(bound)) for bound in fake_quantize.quantizer.range())
    spec = fake_quantize.spec
    return (high - low) / (2**spec.train_bits - (2 if spec.narrow_range else 1))


def propagated_step(fake_quantize, kernel):
    """The most one quantization step on every input of a Dense layer moves one of its outputs: the step of the
    quantizer that feeds the layer times the largest column sum of |kernel|.

    CPUs differ in how their int8 kernels round and accumulate; a difference between an IR and its Keras model
    that stays below a step or two of this is rounding, a wrong range or weight is many.
    """
    return quantization_step(fake_quantize) * float(np.abs(np.asarray(kernel)).sum(axis=0).max())


#: The runtime precisions of an op that runs in int8: OpenVINO's CPU plugin reports `u8` or `i8` by the
#: kernel it picked, which depends on the CPU (with AVX2 and no VNNI, a MatMul that runs `i8` on AVX512-VNNI
#: may run `u8`).
INT8 = ("u8", "i8")


def int8_counts(counts):
    """`{(layer type, precision): n}` with `u8` and `i8` counted together as `"int8"`."""
    merged = {}
    for (layer_type, precision), n in counts.items():
        key = (layer_type, "int8" if precision in INT8 else precision)
        merged[key] = merged.get(key, 0) + n
    return merged


#: The layer types of OpenVINO's CPU plugin whose kernels come from oneDNN, which ONEDNN_MAX_CPU_ISA caps: the
#: int8 arithmetic runs there. (The plugin's own JIT kernels, such as FakeQuantize, Eltwise and Reduce, are chosen
#: by OpenVINO's CPU detection, which only its debug builds let an environment variable cap: OV_CPU_MAX_ISA.)
ONEDNN_LAYER_TYPES = ("Convolution", "FullyConnected", "Pooling", "MatMul")


def int8_kernels():
    """Compiles and runs a small int8 network (FakeQuantize -> Convolution -> ReLU -> AvgPool -> FullyConnected)
    with OpenVINO's CPU plugin in this process.

    Returns:
        `{layer type: [primitiveType, ...]}` of the runtime model's oneDNN layers (ONEDNN_LAYER_TYPES), e.g.
        `{"Convolution": ["brgconv_avx512_amx_I8"], ...}` on a CPU with AMX, `["jit_avx2_I8"]` on AVX2.
    """
    import openvino as ov
    from openvino import opset13 as ops

    def quantized(x, low, high, levels=256):
        low, high = ops.constant(np.float32(low)), ops.constant(np.float32(high))
        return ops.fake_quantize(x, low, high, low, high, levels)

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 3, 16, 16], np.float32, name="x")
    kernel = ops.constant(rng.uniform(-1, 1, (8, 3, 3, 3)).astype("float32"))
    h = ops.relu(ops.convolution(quantized(x, 0, 1), quantized(kernel, -1, 1, 255), [1, 1], [1, 1], [1, 1], [1, 1]))
    h = ops.avg_pool(quantized(h, 0, 4), [2, 2], [0, 0], [0, 0], [2, 2], True)
    h = ops.reshape(h, ops.constant(np.array([1, -1], "int64")), False)
    weights = ops.constant(rng.uniform(-1, 1, (4, 8 * 8 * 8)).astype("float32"))
    y = ops.matmul(quantized(h, 0, 4), quantized(weights, -1, 1, 255), False, True)
    compiled = ov.Core().compile_model(ov.Model([y], [x]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    compiled(np.ones((1, 3, 16, 16), "float32"))  # kernels of dynamic shapes are chosen at the first inference
    kernels = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ONEDNN_LAYER_TYPES:
            kernels.setdefault(info["layerType"].astype(str), []).append(info["primitiveType"].astype(str))
    return kernels
