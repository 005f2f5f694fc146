"""Independent oracles: each operator of SPEC.md written out from its equations, one batch element
and one iteration at a time, in float64. Shares no code with rja_kernels.reference."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _iteration_weights(inp: dict[str, Tensor], names: tuple[str, ...], i: int) -> dict[str, Tensor]:
    return {n: inp[n][i if inp[n].shape[0] > 1 else 0] for n in names}


def paper_loop(inp: dict[str, Tensor], iterations: int, h_tanh: bool = False, out_relu: bool = False
               ) -> tuple[Tensor, Tensor]:
    """SPEC section 1 (the paper's Eq. 1-6, one row per clip)."""
    inp = {n: t.detach().double() for n, t in inp.items()}
    names = ("w_ja", "w_jv", "w_ca", "w_cv", "w_ha", "w_hv")
    outs_a, outs_v = [], []
    for b in range(inp["xa"].shape[0]):
        xa, xv = inp["xa"][b], inp["xv"][b]
        for i in range(iterations):
            w = _iteration_weights(inp, names, i)
            joint = torch.cat([xa, xv], dim=1)  # [L, d]
            root_d = math.sqrt(joint.shape[1])
            new = []
            for x, m in ((xa, "a"), (xv, "v")):
                corr = torch.tanh(x.T @ w[f"w_j{m}"] @ joint / root_d)  # [dm, d]
                att = (x @ w[f"w_c{m}"]) @ corr  # [L, d]
                if h_tanh:
                    att = torch.tanh(att)
                att = att.clamp(min=0)
                update = att @ w[f"w_h{m}"]  # [L, dm]
                new.append(x + (update.clamp(min=0) if out_relu else update))
            xa, xv = new
        outs_a.append(xa)
        outs_v.append(xv)
    return torch.stack(outs_a), torch.stack(outs_v)


def jca_loop(inp: dict[str, Tensor], iterations: int) -> tuple[Tensor, Tensor]:
    """SPEC section 2 (the JCA form)."""
    inp = {n: t.detach().double() for n, t in inp.items()}
    names = ("w_ja", "w_jv", "w_a", "w_v", "w_ca", "w_cv", "w_ha", "w_hv")
    outs_a, outs_v = [], []
    for b in range(inp["xa"].shape[0]):
        xa, xv = inp["xa"][b], inp["xv"][b]
        for i in range(iterations):
            w = _iteration_weights(inp, names, i)
            joint = torch.cat([xa, xv], dim=-1)
            root_d = math.sqrt(joint.shape[1])
            ca = torch.tanh((xa.T @ w["w_ja"]) @ joint / root_d)
            cv = torch.tanh((xv.T @ w["w_jv"]) @ joint / root_d)
            ha = (ca @ w["w_ca"].T + xa.T @ w["w_a"].T).clamp(min=0)
            hv = (cv @ w["w_cv"].T + xv.T @ w["w_v"].T).clamp(min=0)
            xa, xv = (ha @ w["w_ha"].T).T + xa, (hv @ w["w_hv"].T).T + xv
        outs_a.append(xa)
        outs_v.append(xv)
    return torch.stack(outs_a), torch.stack(outs_v)
