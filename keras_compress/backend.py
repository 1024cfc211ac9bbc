"""The one module that knows which Keras backend runs: what the rest of the package asks a backend.

keras_compress computes with `keras.ops` and `keras.quantizers`, which every Keras 3 backend
implements. A few questions have no `keras.ops` answer; they are asked here, and nowhere else:

| question                                    | TensorFlow                   | JAX                              | PyTorch                     |
|---------------------------------------------|------------------------------|----------------------------------|-----------------------------|
| `executing_eagerly(x)`: real values?        | `tf.executing_eagerly()`     | `x` is not a `jax.core.Tracer`   | `x` is not on the meta device |
| `trace_token(x)`: which traced function?    | the `tf.function` graph      | JAX's opaque trace state         | None (no traces)            |
| `init_scope()`: leave the trace             | `tf.init_scope()`            | nothing to leave (see below)     | nothing to leave            |
| `run_outside_trace(fn, vars)`               | in `tf.init_scope()`         | skipped inside a trace           | runs                        |
| `hessian_vector_product(loss_fn, vars)`     | nested `tf.GradientTape`     | `jax.jvp` of `jax.grad`, jitted  | `torch.autograd.grad` twice |
| `gradients(loss_fn, vars)`                  | `tf.GradientTape`            | `jax.grad`                       | `torch.autograd.grad`       |
| `is_tf_dataset`, `is_tf_tensor_spec`, `tf_dataset_cardinality` | `tf.data`, on any backend (Keras' `fit` reads tf.data everywhere)                                     |
| `is_tensor(x)`                              | the backend's tensors, and `tf.Tensor` whenever TensorFlow is loaded                                  |
| `scalar_writer(log_dir)`                    | `tf.summary`, on any backend (what Keras' TensorBoard callback writes with)                           |

TensorFlow is imported only where a TensorFlow object is asked about or made, so a JAX or PyTorch
process that never hands keras_compress a `tf.data.Dataset` runs no TensorFlow code here.
`tensorflow` remains the default backend: every function here does on TensorFlow exactly what the
package did before this module existed.

Example:
    >>> import numpy as np
    >>> executing_eagerly(keras.ops.ones((2,)))
    True
    >>> is_tensor(np.ones(2)), is_tensor(keras.ops.ones((2,)))
    (False, True)
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Sequence

import keras
import numpy as np

__all__ = [
    "INFINITE_CARDINALITY",
    "backend_name",
    "executing_eagerly",
    "fit_detaches_variables",
    "gradients",
    "hessian_vector_product",
    "init_scope",
    "is_tensor",
    "is_tensorflow",
    "is_tf_dataset",
    "is_tf_tensor_spec",
    "run_outside_trace",
    "scalar_writer",
    "tf_dataset_cardinality",
    "trace_token",
]

#: `tf_dataset_cardinality` of an infinite dataset (`dataset.repeat()`), as `tf.data` says it.
INFINITE_CARDINALITY = -1


def backend_name() -> str:
    """The Keras backend of this process: "tensorflow", "jax", "torch" or "numpy"."""
    return keras.backend.backend()


def is_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow."""
    return backend_name() == "tensorflow"


def _loaded_tensorflow():
    """The `tensorflow` module when this process imported it, else None (it is never imported here)."""
    return sys.modules.get("tensorflow")


# ----------------------------------------------------------------------------- traces
def executing_eagerly(tensor: Any = None) -> bool:
    """Whether code runs on real values, not inside a trace that builds a graph.

    True in eager code; False while TensorFlow traces a `tf.function` (`fit`'s train step),
    while JAX traces a jitted function, and while Keras builds a layer by running its `call` on
    symbolic tensors (`KerasTensor`s, JAX tracers, PyTorch meta tensors). On JAX and PyTorch only
    a tensor tells, so pass one that the code at hand computed (a layer's input or output).

    Args:
        tensor: a tensor of the computation at hand (required on JAX and PyTorch).

    Returns:
        True when the values are real.
    """
    if tensor is not None and keras.backend.is_keras_tensor(tensor):
        return False
    name = backend_name()
    if name == "tensorflow":
        return bool(_loaded_tensorflow().executing_eagerly())
    leaves = keras.tree.flatten(tensor) if tensor is not None else []
    if name == "jax":
        import jax

        return not any(isinstance(t, jax.core.Tracer) for t in leaves)
    if name == "torch":
        return not any(getattr(getattr(t, "device", None), "type", None) == "meta" for t in leaves)
    return True


def trace_token(tensor: Any = None) -> Any:
    """What identifies the function being traced (to do something once per trace), or None when eager.

    Two tokens of one trace compare equal (`==`); a token does not keep its trace alive. On
    TensorFlow it stands for the `tf.function` graph, on JAX for the trace (a jitted train step
    is traced once per `fit` that builds a new train function); PyTorch has no traces (None).

    Args:
        tensor: a tensor of the computation at hand (see `executing_eagerly`).
    """
    if executing_eagerly(tensor):
        return None
    name = backend_name()
    if name == "tensorflow":
        import weakref

        return weakref.ref(_loaded_tensorflow().compat.v1.get_default_graph())
    if name == "jax":
        try:
            from jax.extend.core import get_opaque_trace_state
        except ImportError:  # an older JAX: one token for all traces
            return "jax-trace"
        return get_opaque_trace_state(convention="keras_compress")
    return None


def init_scope():
    """A context that runs its body eagerly, outside any trace, where variable values can be read.

    Keras builds a layer that has no `build()` of its own (a user's block holding a wrapper) by
    tracing its `call`; a wrapper built there reads the weights it wraps in this scope. On TensorFlow
    this is `tf.init_scope()`. JAX has no way out of a trace: Keras creates the variables of a layer
    built there as deferred ones, initialized when the trace ends, so code that reads values inside
    this scope must check `executing_eagerly` on what it reads (see `QuantizeWrapper.build_wrapper`).
    On PyTorch the building pass runs on meta tensors but variables are real: nothing to leave.
    """
    if is_tensorflow():
        return _loaded_tensorflow().init_scope()
    return contextlib.nullcontext()


def run_outside_trace(fn: Callable[[], Any], variables: Sequence[keras.Variable]) -> bool:
    """Runs `fn` (which reads `variables`' values) outside any trace, where it can; returns whether it ran.

    In `init_scope()`: always on TensorFlow and PyTorch. On JAX, inside a trace (Keras building a layer
    by tracing its `call`) the values are tracers and there is no way out: `fn` is not run, and the
    caller leaves the work to a later eager step.

    Example:
        >>> v = keras.Variable(np.array([1.0, -3.0], "float32"))
        >>> seen = []
        >>> run_outside_trace(lambda: seen.append(float(np.min(keras.ops.convert_to_numpy(v)))), [v]), seen
        (True, [-3.0])
    """
    with init_scope():
        if not executing_eagerly([v.value for v in variables]):
            return False
        fn()
        return True


def fit_detaches_variables() -> bool:
    """Whether `model.fit` holds the variables' values in its own state during an epoch (JAX).

    Keras' JAX trainer passes the variables through its jitted train step as a state and writes them
    back at the end of each epoch, or when a callback reads `callback.model` (`model.jax_state_sync()`):
    a callback that assigns variables at every step forces that copy at every step.
    """
    return backend_name() == "jax"


# ----------------------------------------------------------------------------- derivatives
def _values(variables):
    return [keras.ops.convert_to_tensor(v) for v in variables]


def _stateless(loss_fn, variables):
    """`loss_fn` as a pure function of the variables' values (JAX)."""

    def loss_of(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return loss_fn()

    return loss_of


def gradients(loss_fn: Callable[[], Any], variables: Sequence[keras.Variable]) -> list[np.ndarray]:
    """The gradient of a scalar loss with respect to Keras variables, as NumPy arrays.

    Args:
        loss_fn: computes the loss from the variables' current values (no arguments). It must not
            assign variables.
        variables: the `keras.Variable`s to differentiate with respect to.

    Returns:
        One array per variable (zeros where the loss does not depend on it).

    Example:
        >>> v = keras.Variable(np.array([1.0, 2.0], "float32"))
        >>> [g.tolist() for g in gradients(lambda: keras.ops.sum(v * v), [v])]
        [[2.0, 4.0]]
    """
    variables = list(variables)
    name = backend_name()
    if name == "tensorflow":
        tf = _loaded_tensorflow()
        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, variables)
    elif name == "jax":
        import jax

        grads = jax.grad(_stateless(loss_fn, variables))(_values(variables))
    elif name == "torch":
        import torch

        params = [v.value for v in variables]
        grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
    else:
        raise NotImplementedError(f"Gradients need the TensorFlow, JAX or PyTorch backend. Received: {name!r}")
    return [
        np.zeros(v.shape, "float32") if g is None else np.asarray(keras.ops.convert_to_numpy(g))
        for v, g in zip(variables, grads)
    ]


def hessian_vector_product(loss_fn: Callable[[], Any], variables: Sequence[keras.Variable]):
    """A function `hvp(vectors) -> [H v]`: Hessian-vector products of a scalar loss, by double backprop.

    The function is built once and called for many vectors (Hutchinson's trace estimate): on JAX
    it is jit-compiled on its first call, on TensorFlow and PyTorch every call differentiates twice.

    Args:
        loss_fn: computes the loss from the variables' current values (no arguments). It must not
            assign variables.
        variables: the `keras.Variable`s of the Hessian.

    Returns:
        A callable taking one NumPy array per variable and returning `H @ v` per variable, as NumPy
        arrays.

    Example:
        >>> v = keras.Variable(np.array([1.0, 2.0], "float32"))
        >>> hvp = hessian_vector_product(lambda: keras.ops.sum(v * v * v), [v])
        >>> [h.tolist() for h in hvp([np.ones(2, "float32")])]
        [[6.0, 12.0]]
    """
    variables = list(variables)
    name = backend_name()
    if name == "tensorflow":
        tf = _loaded_tensorflow()

        def hvp(vectors):
            vectors = [tf.constant(np.asarray(u, "float32")) for u in vectors]
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    loss = loss_fn()
                grads = inner.gradient(loss, variables)
                dot = tf.add_n([tf.reduce_sum(g * u) for g, u in zip(grads, vectors)])
            return [np.asarray(h) for h in outer.gradient(dot, variables)]

        return hvp
    if name == "jax":
        import jax

        grad = jax.grad(_stateless(loss_fn, variables))
        product = jax.jit(lambda values, vectors: jax.jvp(grad, (values,), (vectors,))[1])

        def hvp(vectors):
            vectors = [np.asarray(u, "float32") for u in vectors]
            return [np.asarray(h) for h in product(_values(variables), vectors)]

        return hvp
    if name == "torch":
        import torch

        def hvp(vectors):
            params = [v.value for v in variables]
            grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
            vectors = [torch.as_tensor(np.asarray(u, "float32"), device=p.device) for u, p in zip(vectors, params)]
            dot = sum((g * u).sum() for g, u in zip(grads, vectors))
            return [h.detach().cpu().numpy() for h in torch.autograd.grad(dot, params)]

        return hvp
    raise NotImplementedError(f"Hessian-vector products need the TensorFlow, JAX or PyTorch backend. Received: {name!r}")


# ----------------------------------------------------------------------------- data and tensors
def is_tf_dataset(obj: Any) -> bool:
    """Whether `obj` is a `tf.data.Dataset` (on any backend; False when TensorFlow is not loaded)."""
    tf = _loaded_tensorflow()
    return tf is not None and isinstance(obj, tf.data.Dataset)


def is_tf_tensor_spec(obj: Any) -> bool:
    """Whether `obj` is a `tf.TensorSpec` (a part of a `tf.data.Dataset`'s `element_spec`)."""
    tf = _loaded_tensorflow()
    return tf is not None and isinstance(obj, tf.TensorSpec)


def tf_dataset_cardinality(dataset: Any) -> int:
    """The number of elements of a `tf.data.Dataset`: `INFINITE_CARDINALITY` (-1) for a repeated one,
    -2 when unknown."""
    return int(dataset.cardinality())


def is_tensor(obj: Any) -> bool:
    """Whether `obj` is a tensor of the backend, or a `tf.Tensor` (which `tf.data` yields on any backend).

    A NumPy array is not a tensor here.
    """
    if keras.ops.is_tensor(obj):
        return True
    tf = _loaded_tensorflow()
    return tf is not None and isinstance(obj, tf.Tensor)


class _TensorBoardWriter:
    """Scalars into a TensorBoard log directory, with `tf.summary` (as Keras' TensorBoard callback)."""

    def __init__(self, log_dir):
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(log_dir))

    def write(self, scalars: dict[str, float], step: int) -> None:
        """Writes `{tag: value}` at `step` and flushes."""
        with self._writer.as_default():
            for tag, value in scalars.items():
                self._tf.summary.scalar(tag, float(value), step=int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def scalar_writer(log_dir: Any) -> _TensorBoardWriter:
    """A writer of TensorBoard scalars into `log_dir`: `write({tag: value}, step)`, then `close()`.

    TensorBoard's event files are written with `tf.summary` on every backend, as Keras' own
    TensorBoard callback does.
    """
    return _TensorBoardWriter(log_dir)
