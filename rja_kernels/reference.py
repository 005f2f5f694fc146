"""Pure-PyTorch references of both operators of docs/SPEC.md.

Every other backend is tested against this file. It materialises `C_a`/`C_v` exactly as the SPEC
writes them. Each operator has a plain autograd-differentiable form (`*_reference`, double backward
included) and the backend pair registered as backend "reference": a forward that also returns each
iteration's input features and an analytic backward that recomputes each iteration from them, the
formulas the fused kernels implement.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from rja_kernels.backends import Backend, register_backend


def _weights_of(weights: tuple[Tensor, ...], i: int) -> tuple[Tensor, ...]:
    return tuple(w[i if w.shape[0] > 1 else 0] for w in weights)


def _correlation(x: Tensor, w_j: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
    """`P = x^T w_j` `[B, dm, L]` and `C = tanh(P J / sqrt(d))` `[B, dm, d]` (SPEC Eq. 1, 2)."""
    p = x.mT @ w_j
    return p, torch.tanh(p @ j * j.shape[-1] ** -0.5)


# ---- the paper's form (SPEC section 1) ------------------------------------------------------------

def paper_step(xa: Tensor, xv: Tensor, w_ja: Tensor, w_jv: Tensor, w_ca: Tensor, w_cv: Tensor,
               w_ha: Tensor, w_hv: Tensor, h_tanh: bool = False, out_relu: bool = False) -> tuple[Tensor, Tensor]:
    """One iteration of the paper's form for a batch; weights of one iteration (2-D)."""
    j = torch.cat([xa, xv], dim=-1)  # [B, L, d]
    out = []
    for x, w_j, w_c, w_h in ((xa, w_ja, w_ca, w_ha), (xv, w_jv, w_cv, w_hv)):
        _, c = _correlation(x, w_j, j)
        g = (x @ w_c) @ c  # [B, L, d]
        h = torch.relu(torch.tanh(g) if h_tanh else g)
        u = h @ w_h  # [B, L, dm]
        out.append(x + (torch.relu(u) if out_relu else u))
    return out[0], out[1]


def recursive_joint_attention_reference(
    xa: Tensor, xv: Tensor, w_ja: Tensor, w_jv: Tensor, w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
    iterations: int, h_tanh: bool = False, out_relu: bool = False,
) -> tuple[Tensor, Tensor]:
    """The paper's operator as plain autograd-differentiable PyTorch; no validation (see `rja_kernels.paper_op`)."""
    weights = (w_ja, w_jv, w_ca, w_cv, w_ha, w_hv)
    for i in range(iterations):
        xa, xv = paper_step(xa, xv, *_weights_of(weights, i), h_tanh=h_tanh, out_relu=out_relu)
    return xa, xv


def _paper_step_backward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], grad_xa: Tensor, grad_xv: Tensor,
                         h_tanh: bool, out_relu: bool) -> tuple[Tensor, ...]:
    """Gradients of one iteration of the paper's form, recomputing its intermediates. Masks multiply
    (never select), so a NaN gradient stays NaN as it would through the arithmetic."""
    w_ja, w_jv, w_ca, w_cv, w_ha, w_hv = weights
    j = torch.cat([xa, xv], dim=-1)  # [B, L, d]
    scale = j.shape[-1] ** -0.5
    grad_j = torch.zeros_like(j)
    grads = []
    for x, grad_out, w_j, w_c, w_h in ((xa, grad_xa, w_ja, w_ca, w_ha), (xv, grad_xv, w_jv, w_cv, w_hv)):
        p, c = _correlation(x, w_j, j)
        q = x @ w_c  # [B, L, dm]
        g = q @ c  # [B, L, d]
        a = torch.tanh(g) if h_tanh else g
        h = torch.relu(a)
        grad_u = grad_out
        if out_relu:
            grad_u = grad_out * (h @ w_h > 0)
        grad_w_h = (h.mT @ grad_u).sum(0)  # [d, dm]
        grad_g = (grad_u @ w_h.mT) * (a > 0)  # [B, L, d]
        if h_tanh:
            grad_g = grad_g * (1 - a * a)
        grad_q = grad_g @ c.mT  # [B, L, dm]
        grad_s = (q.mT @ grad_g) * (1 - c * c) * scale  # [B, dm, d]: through tanh and the scale
        grad_p = grad_s @ j.mT  # [B, dm, L]
        grad_j += p.mT @ grad_s
        grad_w_c = (x.mT @ grad_q).sum(0)  # [dm, dm]
        grad_w_j = (x @ grad_p).sum(0)  # [L, L]
        grad_x = grad_out + grad_q @ w_c.mT + w_j @ grad_p.mT  # [B, L, dm]
        grads.append((grad_x, grad_w_j, grad_w_c, grad_w_h))
    (gxa, gw_ja, gw_ca, gw_ha), (gxv, gw_jv, gw_cv, gw_hv) = grads
    da = xa.shape[-1]
    return gxa + grad_j[..., :da], gxv + grad_j[..., da:], gw_ja, gw_jv, gw_ca, gw_cv, gw_ha, gw_hv


# ---- the JCA form (SPEC section 2) ------------------------------------------------------------------

def jca_step(
    xa: Tensor, xv: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_a: Tensor, w_v: Tensor,
    w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
) -> tuple[Tensor, Tensor]:
    """One JCA iteration for a batch: `xa [B, L, da]`, `xv [B, L, dv]`, weights of one iteration (2-D)."""
    j = torch.cat([xa, xv], dim=-1)  # [B, L, d]
    _, ca = _correlation(xa, w_ja, j)  # [B, da, d]
    _, cv = _correlation(xv, w_jv, j)  # [B, dv, d]
    ha = torch.relu(ca @ w_ca.mT + xa.mT @ w_a.mT)  # [B, da, k]
    hv = torch.relu(cv @ w_cv.mT + xv.mT @ w_v.mT)  # [B, dv, k]
    return (ha @ w_ha.mT).mT + xa, (hv @ w_hv.mT).mT + xv


def joint_cross_attention_reference(
    xa: Tensor, xv: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_a: Tensor, w_v: Tensor,
    w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
    iterations: int,
) -> tuple[Tensor, Tensor]:
    """The JCA operator as plain autograd-differentiable PyTorch; no validation (see `rja_kernels.jca_op`)."""
    weights = (w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv)
    for i in range(iterations):
        xa, xv = jca_step(xa, xv, *_weights_of(weights, i))
    return xa, xv


def _jca_step_backward(xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], grad_xa: Tensor, grad_xv: Tensor
                       ) -> tuple[Tensor, ...]:
    """Gradients of one JCA iteration, recomputing its intermediates."""
    w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv = weights
    j = torch.cat([xa, xv], dim=-1)  # [B, L, d]
    scale = j.shape[-1] ** -0.5
    grad_j = torch.zeros_like(j)
    grads = []
    for x, grad_out, w_j, w_u, w_c, w_h in ((xa, grad_xa, w_ja, w_a, w_ca, w_ha),
                                            (xv, grad_xv, w_jv, w_v, w_cv, w_hv)):
        p, c = _correlation(x, w_j, j)
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


# ---- the backends ------------------------------------------------------------------------------------

def _forward(step, xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int, **options: bool
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Outputs plus the input features of every iteration, `[T, B, L, da|dv]`."""
    xa_iters, xv_iters = [], []
    for i in range(iterations):
        xa_iters.append(xa)
        xv_iters.append(xv)
        xa, xv = step(xa, xv, *_weights_of(weights, i), **options)
    return xa.contiguous(), xv.contiguous(), torch.stack(xa_iters), torch.stack(xv_iters)


def _backward(step_backward, grad_xa: Tensor, grad_xv: Tensor, xa_iters: Tensor, xv_iters: Tensor,
              weights: tuple[Tensor, ...], **options: bool) -> tuple[Tensor, ...]:
    """Recompute each iteration from its saved input features, last iteration first. Returns grads
    of (xa, xv, *weights); shared weights (Tw = 1) sum over iterations."""
    grad_weights = [torch.zeros_like(w) for w in weights]
    for i in reversed(range(xa_iters.shape[0])):
        grads = step_backward(xa_iters[i], xv_iters[i], _weights_of(weights, i), grad_xa, grad_xv, **options)
        grad_xa, grad_xv = grads[0], grads[1]
        for grad_w, w, g in zip(grad_weights, weights, grads[2:]):
            grad_w[i if w.shape[0] > 1 else 0] += g
    return (grad_xa.contiguous(), grad_xv.contiguous(), *grad_weights)


def _unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    return None  # plain PyTorch runs wherever its matmul and tanh do


def _backend(operator: str, step, step_backward) -> Backend:
    return Backend("reference", operator, partial(_forward, step), partial(_backward, step_backward), _unsupported)


register_backend(_backend("recursive_joint_attention", paper_step, _paper_step_backward))
register_backend(_backend("joint_cross_attention", jca_step, _jca_step_backward))
