"""The recursive joint cross-attention block as an `nn.Module` over the fused operator."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import rja_kernels
from rja_kernels.jca_op import WEIGHT_NAMES, weight_shapes


class RecursiveJointAttention(nn.Module):
    """Holds the eight weights of docs/SPEC.md, `[Tw, ...]` with `Tw = 1` when shared by all
    iterations, else `Tw = iterations`, and calls `rja_kernels.recursive_joint_attention`."""

    def __init__(self, clips: int, da: int, dv: int, hidden: int, iterations: int,
                 shared_weights: bool = False, backend: str = "auto") -> None:
        super().__init__()
        self.iterations = iterations
        self.backend = backend
        tw = 1 if shared_weights else iterations
        shapes = weight_shapes(clips, da, dv, {"k": hidden})
        for name in WEIGHT_NAMES:
            self.register_parameter(name, nn.Parameter(torch.empty(tw, *shapes[name])))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name in WEIGHT_NAMES:
            for w in getattr(self, name):  # Xavier per iteration: each slice is one 2-D weight matrix
                nn.init.xavier_uniform_(w)

    def forward(self, xa: Tensor, xv: Tensor) -> tuple[Tensor, Tensor]:
        """`xa [B, L, da]`, `xv [B, L, dv]` -> the features after `iterations` iterations."""
        weights = [getattr(self, name) for name in WEIGHT_NAMES]
        # The operator needs one dtype for all inputs; under autocast it runs in the autocast dtype.
        device = xa.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weights[0].dtype
        xa, xv, *weights = (t.to(dtype) for t in (xa, xv, *weights))
        return rja_kernels.joint_cross_attention(
            xa, xv, *weights, iterations=self.iterations, backend=self.backend)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, Tw={self.w_a.shape[0]}, backend={self.backend!r}"
