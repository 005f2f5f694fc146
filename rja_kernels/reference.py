"""Pure-PyTorch reference of the recursive joint attention operator (docs/SPEC.md).

Every other backend is tested against this file. It materialises `Ca`/`Cv` exactly as the SPEC
writes them and is differentiable by PyTorch autograd (double backward included).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rja_kernels.backends import Backend, register_backend


def joint_attention_step(
    xa: Tensor, xv: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_a: Tensor, w_v: Tensor,
    w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
) -> tuple[Tensor, Tensor]:
    """One iteration for a batch: `xa [B, L, da]`, `xv [B, L, dv]`, weights of one iteration (2-D)."""
    j = torch.cat([xa, xv], dim=-1)  # [B, L, d]
    scale = j.shape[-1] ** -0.5
    ca = torch.tanh(xa.mT @ w_ja @ j * scale)  # [B, da, d]
    cv = torch.tanh(xv.mT @ w_jv @ j * scale)  # [B, dv, d]
    ha = torch.relu(ca @ w_ca.mT + xa.mT @ w_a.mT)  # [B, da, k]
    hv = torch.relu(cv @ w_cv.mT + xv.mT @ w_v.mT)  # [B, dv, k]
    return (ha @ w_ha.mT).mT + xa, (hv @ w_hv.mT).mT + xv


def _weights_of(weights: tuple[Tensor, ...], i: int) -> tuple[Tensor, ...]:
    return tuple(w[i if w.shape[0] > 1 else 0] for w in weights)


def recursive_joint_attention_reference(
    xa: Tensor, xv: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_a: Tensor, w_v: Tensor,
    w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
    iterations: int,
) -> tuple[Tensor, Tensor]:
    """The operator as plain autograd-differentiable PyTorch; no validation (see `rja_kernels.op`)."""
    weights = (w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv)
    for i in range(iterations):
        xa, xv = joint_attention_step(xa, xv, *_weights_of(weights, i))
    return xa, xv


def forward(
    xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backend forward: outputs plus the input features of every iteration, `[T, B, L, da|dv]`."""
    xa_iters, xv_iters = [], []
    for i in range(iterations):
        xa_iters.append(xa)
        xv_iters.append(xv)
        xa, xv = joint_attention_step(xa, xv, *_weights_of(weights, i))
    return xa.contiguous(), xv.contiguous(), torch.stack(xa_iters), torch.stack(xv_iters)


def _step_backward(
    xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], grad_xa: Tensor, grad_xv: Tensor
) -> tuple[Tensor, ...]:
    """Gradients of one iteration, recomputing its intermediates. The kernels' backward passes
    implement these same formulas; gradcheck holds them to autograd of `joint_attention_step`."""
    w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv = weights
    j = torch.cat([xa, xv], dim=-1)  # [B, L, d]
    scale = j.shape[-1] ** -0.5
    grad_j = torch.zeros_like(j)
    grads = []
    for x, grad_out, w_j, w_u, w_c, w_h in ((xa, grad_xa, w_ja, w_a, w_ca, w_ha),
                                            (xv, grad_xv, w_jv, w_v, w_cv, w_hv)):
        p = x.mT @ w_j  # [B, dm, L]
        c = torch.tanh(p @ j * scale)  # [B, dm, d]
        z = c @ w_c.mT + x.mT @ w_u.mT  # [B, dm, k]
        h = torch.relu(z)
        grad_w_h = (grad_out @ h).sum(0)  # [L, k]
        grad_z = (grad_out.mT @ w_h) * (z > 0)  # [B, dm, k]
        grad_w_c = (grad_z.mT @ c).sum(0)  # [k, d]
        grad_w_u = (grad_z.mT @ x.mT).sum(0)  # [k, L]
        grad_s = (grad_z @ w_c) * (1 - c * c) * scale  # [B, dm, d]: through tanh and the scale
        grad_p = grad_s @ j.mT  # [B, dm, L]
        grad_j += p.mT @ grad_s
        grad_w_j = (x @ grad_p).sum(0)  # [L, L]
        grad_x = grad_out + w_u.mT @ grad_z.mT + w_j @ grad_p.mT  # [B, L, dm]
        grads.append((grad_x, grad_w_j, grad_w_u, grad_w_c, grad_w_h))
    (gxa, gw_ja, gw_a, gw_ca, gw_ha), (gxv, gw_jv, gw_v, gw_cv, gw_hv) = grads
    da = xa.shape[-1]
    return (gxa + grad_j[..., :da], gxv + grad_j[..., da:],
            gw_ja, gw_jv, gw_a, gw_v, gw_ca, gw_cv, gw_ha, gw_hv)


def backward(
    grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor, weights: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    """Backend backward: recompute each iteration from its saved input features, last iteration
    first. Returns grads of (xa, xv, *weights); shared weights (Tw = 1) sum over iterations."""
    grad_weights = [torch.zeros_like(w) for w in weights]
    for i in reversed(range(xa_iters.shape[0])):
        grads = _step_backward(xa_iters[i], xv_iters[i], _weights_of(weights, i), grad_xa, grad_xv)
        grad_xa, grad_xv = grads[0], grads[1]
        for grad_w, w, g in zip(grad_weights, weights, grads[2:]):
            grad_w[i if w.shape[0] > 1 else 0] += g
    return (grad_xa.contiguous(), grad_xv.contiguous(), *grad_weights)


def _unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    return None  # plain PyTorch runs wherever its matmul and tanh do


register_backend(Backend("reference", forward, backward, _unsupported))
