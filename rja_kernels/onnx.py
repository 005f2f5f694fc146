"""ONNX translations of both operators, for `torch.onnx.export(..., dynamo=True)`.

The custom ops `rja::recursive_joint_attention` and `rja::joint_cross_attention` have no ONNX
counterpart, so the exporter is given a translation of each (`custom_translation_table()`): the
reference math of docs/SPEC.md (`rja_kernels.reference`) written with standard ONNX operators
(MatMul, Transpose, Concat, Tanh, Relu, Add, Mul, Gather) through onnxscript. The exported file
then runs on any ONNX runtime, with no rja code or extension.

Each translation is traced once per op node: the `T` iterations are unrolled (T is an attribute of
the node, fixed at export), each iteration picks its weight slice `w[i]` (`w[0]` when the weights
are shared, `Tw = 1`) and the batch dimension stays symbolic (every MatMul broadcasts over it).
The op's third and fourth outputs (each iteration's input features, `[T, B, L, dm]`, which only
the backward pass reads) are built as the SPEC says; an inference graph does not use them and the
exporter's optimizer removes them.

Needs the `export` extra (`pip install 'rja[export]'`: onnx, onnxscript, onnxruntime); importing
this module without onnxscript raises ImportError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import onnxscript
import torch
from onnxscript import opset20 as op

# The ONNX opset of the translations; export with the same `opset_version`.
OPSET = 20

__all__ = ["OPSET", "custom_translation_table", "joint_cross_attention_onnx", "recursive_joint_attention_onnx"]

# An onnxscript value while the exporter traces a translation (an `onnx_ir.Value`).
Value = Any


def _static_last_dim(*values: Value) -> int | None:
    """Sum of the last dims of `values` when all are static at export time, else None."""
    total = 0
    for v in values:
        shape = getattr(v, "shape", None)
        if shape is None or len(shape) == 0 or not isinstance(shape[-1], int):
            return None
        total += shape[-1]
    return total


def _inverse_sqrt_d(j: Value, xa: Value, xv: Value) -> Value:
    """`1 / sqrt(d)` for `d = da + dv`, the last dim of `J`: a constant when the sizes are static
    (they are: weights fix them), else computed from `J`'s shape."""
    d = _static_last_dim(xa, xv)
    if d is not None:
        return op.Constant(value_float=d ** -0.5)
    size = op.Cast(op.Shape(j, start=-1), to=onnxscript.FLOAT.dtype)
    return op.CastLike(op.Reciprocal(op.Sqrt(size)), j)


def _transpose(x: Value) -> Value:
    """`x.mT` of a `[B, rows, cols]` value."""
    return op.Transpose(x, perm=[0, 2, 1])


def _slice(weights: Sequence[Value], i: int) -> list[Value]:
    """Each weight's slice of iteration `i`: `w[i]`, or `w[0]` when shared (`Tw = 1`). The SPEC's
    `Tw` is in each weight's static shape; an unknown `Tw` is read as one weight set per iteration."""
    out = []
    for w in weights:
        shape = getattr(w, "shape", None)
        tw = shape[0] if shape is not None and len(shape) else None
        index = 0 if tw == 1 else i
        out.append(op.Gather(w, op.Constant(value_int=index), axis=0))
    return out


def _correlation(x: Value, w_j: Value, j: Value, scale: Value) -> Value:
    """`C = tanh((x^T w_j) J / sqrt(d))`, `[B, dm, d]` (SPEC Eq. 1, 2)."""
    return op.Tanh(op.Mul(op.MatMul(op.MatMul(_transpose(x), w_j), j), scale))


def _stack(values: Sequence[Value]) -> Value:
    """`torch.stack(values)` along a new dim 0."""
    axis = op.Constant(value_ints=[0])
    return op.Concat(*(op.Unsqueeze(v, axis) for v in values), axis=0)


def _paper_step(xa: Value, xv: Value, weights: Sequence[Value], h_tanh: bool, out_relu: bool
                ) -> tuple[Value, Value]:
    """One iteration of the paper's form (SPEC section 1; `rja_kernels.reference.paper_step`)."""
    w_ja, w_jv, w_ca, w_cv, w_ha, w_hv = weights
    j = op.Concat(xa, xv, axis=-1)  # [B, L, d]
    scale = _inverse_sqrt_d(j, xa, xv)
    out = []
    for x, w_j, w_c, w_h in ((xa, w_ja, w_ca, w_ha), (xv, w_jv, w_cv, w_hv)):
        c = _correlation(x, w_j, j, scale)  # [B, dm, d]
        g = op.MatMul(op.MatMul(x, w_c), c)  # [B, L, d]
        h = op.Relu(op.Tanh(g) if h_tanh else g)
        u = op.MatMul(h, w_h)  # [B, L, dm]
        out.append(op.Add(x, op.Relu(u) if out_relu else u))
    return out[0], out[1]


def _jca_step(xa: Value, xv: Value, weights: Sequence[Value]) -> tuple[Value, Value]:
    """One iteration of the JCA form (SPEC section 2; `rja_kernels.reference.jca_step`)."""
    w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv = weights
    j = op.Concat(xa, xv, axis=-1)  # [B, L, d]
    scale = _inverse_sqrt_d(j, xa, xv)
    out = []
    for x, w_j, w_u, w_c, w_h in ((xa, w_ja, w_a, w_ca, w_ha), (xv, w_jv, w_v, w_cv, w_hv)):
        c = _correlation(x, w_j, j, scale)  # [B, dm, d]
        # relu(C w_c^T + x^T w_u^T) [B, dm, k]; (H w_h^T)^T = w_h H^T [B, L, dm]
        h = op.Relu(op.Add(op.MatMul(c, op.Transpose(w_c, perm=[1, 0])),
                           op.MatMul(_transpose(x), op.Transpose(w_u, perm=[1, 0]))))
        out.append(op.Add(op.MatMul(w_h, _transpose(h)), x))
    return out[0], out[1]


def _recursion(step: Callable[..., tuple[Value, Value]], xa: Value, xv: Value, weights: Sequence[Value],
               iterations: int, **options: bool) -> tuple[Value, Value, Value, Value]:
    """The op's four outputs: `(xa_T, xv_T, xa_iters [T, B, L, da], xv_iters [T, B, L, dv])`."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1 at export, got {iterations!r}")
    xa_iters, xv_iters = [], []
    for i in range(iterations):
        xa_iters.append(xa)
        xv_iters.append(xv)
        xa, xv = step(xa, xv, _slice(weights, i), **options)
    return xa, xv, _stack(xa_iters), _stack(xv_iters)


def recursive_joint_attention_onnx(
    xa: Value, xv: Value, w_ja: Value, w_jv: Value, w_ca: Value, w_cv: Value, w_ha: Value, w_hv: Value,
    iterations: int, h_tanh: bool, out_relu: bool, backend: str,
) -> tuple[Value, Value, Value, Value]:
    """Translation of `rja::recursive_joint_attention` (the op's schema; `backend` is ignored: the
    ONNX graph is its own implementation)."""
    del backend
    return _recursion(_paper_step, xa, xv, (w_ja, w_jv, w_ca, w_cv, w_ha, w_hv), iterations,
                      h_tanh=bool(h_tanh), out_relu=bool(out_relu))


def joint_cross_attention_onnx(
    xa: Value, xv: Value, w_ja: Value, w_jv: Value, w_a: Value, w_v: Value,
    w_ca: Value, w_cv: Value, w_ha: Value, w_hv: Value, iterations: int, backend: str,
) -> tuple[Value, Value, Value, Value]:
    """Translation of `rja::joint_cross_attention` (the op's schema; `backend` is ignored)."""
    del backend
    return _recursion(_jca_step, xa, xv, (w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv), iterations)


def custom_translation_table() -> dict[Any, Callable[..., Any]]:
    """`custom_translation_table` for `torch.onnx.export(dynamo=True, opset_version=OPSET)`: both ops."""
    import rja_kernels  # noqa: F401  (registers the ops)

    return {
        torch.ops.rja.recursive_joint_attention.default: recursive_joint_attention_onnx,
        torch.ops.rja.joint_cross_attention.default: joint_cross_attention_onnx,
    }

