"""The public operator, its argument checks and its `torch.library` custom op.

Shapes are checked once, here, before dispatch; backends may assume valid inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rja_kernels.backends import get_backend, resolve_backend

WEIGHT_NAMES = ("w_ja", "w_jv", "w_a", "w_v", "w_ca", "w_cv", "w_ha", "w_hv")
# The SPEC's layout of one iteration's weights, `[Tw, ...]` without the leading Tw.
WEIGHT_LAYOUTS = {
    "w_ja": "[L, L]", "w_jv": "[L, L]",
    "w_a": "[k, L]", "w_v": "[k, L]",
    "w_ca": "[k, da + dv]", "w_cv": "[k, da + dv]",
    "w_ha": "[L, k]", "w_hv": "[L, k]",
}


def weight_shapes(seq: int, da: int, dv: int, k: int) -> dict[str, tuple[int, int]]:
    """Shape of one iteration's slice of each weight (`WEIGHT_LAYOUTS` with the sizes filled in)."""
    d = da + dv
    return {
        "w_ja": (seq, seq), "w_jv": (seq, seq),
        "w_a": (k, seq), "w_v": (k, seq),
        "w_ca": (k, d), "w_cv": (k, d),
        "w_ha": (seq, k), "w_hv": (seq, k),
    }


def _expect_shape(name: str, t: Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {meaning} = {list(expected)}, got {list(t.shape)}")


def check_inputs(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int) -> None:
    """Raise TypeError/ValueError naming the first argument that breaks the SPEC's contract."""
    names = ("xa", "xv", *WEIGHT_NAMES)
    tensors = (xa, xv, *weights)
    for name, t in zip(names, tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
        if t.dtype != xa.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but xa has {xa.dtype}; all inputs need one dtype")
        if t.device != xa.device:
            raise ValueError(f"{name} is on {t.device} but xa is on {xa.device}; all inputs need one device")
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D, got shape {list(t.shape)}")
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")

    b, seq, da = xa.shape
    if xv.shape[:2] != xa.shape[:2]:
        raise ValueError(
            f"xv must have shape [B, L, dv] with B={b}, L={seq} as in xa, got {list(xv.shape)}"
        )
    dv = xv.shape[2]
    for name, size in (("L", seq), ("da", da), ("dv", dv)):
        if size < 1:
            raise ValueError(f"{name} must be >= 1, got xa {list(xa.shape)}, xv {list(xv.shape)}")
    w_a = weights[2]
    tw, k = w_a.shape[0], w_a.shape[1]
    if tw not in (1, iterations):
        raise ValueError(
            f"weights must hold Tw = 1 (shared) or Tw = iterations = {iterations} sets, "
            f"got Tw = {tw} in w_a {list(w_a.shape)}"
        )
    if k < 1:
        raise ValueError(f"k (w_a.shape[1]) must be >= 1, got {k}")
    shapes = weight_shapes(seq, da, dv, k)
    for name, w in zip(WEIGHT_NAMES, weights):
        _expect_shape(name, w, (tw, *shapes[name]), f"[Tw, {WEIGHT_LAYOUTS[name][1:]}")


@torch.library.custom_op("rja::recursive_joint_attention", mutates_args=(), device_types=("cpu", "cuda"))
def _forward_op(
    xa: Tensor, xv: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_a: Tensor, w_v: Tensor,
    w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
    iterations: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    weights = (w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv)
    return get_backend(backend).forward(xa, xv, weights, iterations)


@_forward_op.register_fake
def _forward_fake(xa, xv, w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv, iterations, backend):
    return (
        torch.empty_like(xa, memory_format=torch.contiguous_format),
        torch.empty_like(xv, memory_format=torch.contiguous_format),
        xa.new_empty((iterations, *xa.shape)),
        xv.new_empty((iterations, *xv.shape)),
    )


@torch.library.custom_op(
    "rja::recursive_joint_attention_backward", mutates_args=(), device_types=("cpu", "cuda")
)
def _backward_op(
    grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_a: Tensor, w_v: Tensor,
    w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    weights = (w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv)
    return tuple(get_backend(backend).backward(grad_xa, grad_xv, xa_iters, xv_iters, weights))


@_backward_op.register_fake
def _backward_fake(grad_xa, grad_xv, xa_iters, xv_iters, *weights_and_backend):
    weights = weights_and_backend[:-1]
    return (
        torch.empty_like(xa_iters[0], memory_format=torch.contiguous_format),
        torch.empty_like(xv_iters[0], memory_format=torch.contiguous_format),
        *(torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights),
    )


def _setup_context(ctx, inputs, output) -> None:
    ctx.backend = inputs[-1]
    ctx.mark_non_differentiable(output[2], output[3])
    ctx.save_for_backward(output[2], output[3], *inputs[2:10])


def _backward(ctx, grad_xa, grad_xv, _grad_xa_iters, _grad_xv_iters):
    xa_iters, xv_iters, *weights = ctx.saved_tensors
    # Outputs unused by the loss arrive as None; the kernels want dense gradients.
    grad_xa = torch.zeros_like(xa_iters[0]) if grad_xa is None else grad_xa.contiguous()
    grad_xv = torch.zeros_like(xv_iters[0]) if grad_xv is None else grad_xv.contiguous()
    grads = _backward_op(grad_xa, grad_xv, xa_iters, xv_iters, *weights, ctx.backend)
    return (*grads, None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def recursive_joint_attention(
    xa: Tensor, xv: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_a: Tensor, w_v: Tensor,
    w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
    iterations: int = 2, backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Recursive joint cross-attention of docs/SPEC.md: `T = iterations` JCA iterations.

    Args:
        xa: audio features `[B, L, da]`; xv: visual features `[B, L, dv]`.
        w_ja, w_jv: `[Tw, L, L]`; w_a, w_v: `[Tw, k, L]`; w_ca, w_cv: `[Tw, k, da+dv]`;
        w_ha, w_hv: `[Tw, L, k]`, with `Tw` 1 (shared by all iterations) or `iterations`.
        backend: "auto" (fastest available for the inputs' device and dtype), "reference",
            "cpu", "triton" or "cuda". A forced backend that cannot run raises
            `BackendUnavailableError` with the reason.

    Returns:
        `(xa_T, xv_T)`, the features after the last iteration, in the inputs' dtype.
    """
    weights = (w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv)
    check_inputs(xa, xv, weights, iterations)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    name = resolve_backend(backend, xa.device, xa.dtype)
    xa_out, xv_out, _, _ = _forward_op(xa, xv, *weights, iterations, name)
    return xa_out, xv_out
