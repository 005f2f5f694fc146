"""The fusion blocks as `nn.Module`s: the paper's recursive joint attention and the JCA form over
the fused operators of `rja_kernels`, and the authors' released block in plain PyTorch.

- "rja": the paper's Eq. 1-6 (SPEC section 1), optional h_tanh/out_relu, on
  `rja_kernels.recursive_joint_attention`;
- "jca": the earlier papers' JCA block (their `models/cam.py`), on `rja_kernels.joint_cross_attention`;
- "released": their `models/dense_coattn.py` + `models/av_crossatten.py` exactly, in plain PyTorch (its
  J projection and biases are outside the operator's contract).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rja_kernels import jca_op, joint_cross_attention, paper_op, recursive_joint_attention


class _FusedAttention(nn.Module):
    """The weights of one fused operator, `[Tw, ...]` with `Tw = 1` when shared by all iterations,
    else `Tw = iterations`; Xavier-initialised per iteration (each slice is one 2-D weight matrix)."""

    def __init__(self, shapes: dict[str, tuple[int, int]], iterations: int, shared_weights: bool,
                 backend: str) -> None:
        super().__init__()
        self.iterations, self.backend = iterations, backend
        self.weight_names = tuple(shapes)
        tw = 1 if shared_weights else iterations
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(tw, *shape)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name in self.weight_names:
            for w in getattr(self, name):
                nn.init.xavier_uniform_(w)

    def _operands(self, xa: Tensor, xv: Tensor) -> list[Tensor]:
        # The operator needs one dtype for all inputs; under autocast it runs in the autocast dtype.
        weights = [getattr(self, name) for name in self.weight_names]
        device = xa.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weights[0].dtype
        return [t.to(dtype) for t in (xa, xv, *weights)]

    def extra_repr(self) -> str:
        tw = getattr(self, self.weight_names[0]).shape[0]
        return f"iterations={self.iterations}, Tw={tw}, backend={self.backend!r}"


class RecursiveJointAttention(_FusedAttention):
    """The paper's recursive joint attention (fusion="rja"): `rja_kernels.recursive_joint_attention`.
    `h_tanh`/`out_relu` add the tanh before the attention map's ReLU and the ReLU after the output
    projection that the authors' released code has."""

    def __init__(self, clips: int, da: int, dv: int, iterations: int, shared_weights: bool = False,
                 h_tanh: bool = False, out_relu: bool = False, backend: str = "auto") -> None:
        super().__init__(paper_op.weight_shapes(clips, da, dv), iterations, shared_weights, backend)
        self.h_tanh, self.out_relu = h_tanh, out_relu

    def forward(self, xa: Tensor, xv: Tensor) -> tuple[Tensor, Tensor]:
        """`xa [B, L, da]`, `xv [B, L, dv]` -> the features after `iterations` iterations."""
        return recursive_joint_attention(*self._operands(xa, xv), iterations=self.iterations, h_tanh=self.h_tanh,
                                         out_relu=self.out_relu, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, h_tanh={self.h_tanh}, out_relu={self.out_relu}"


class JointCrossAttention(_FusedAttention):
    """The JCA form (fusion="jca") with attention hidden size `hidden` (k):
    `rja_kernels.joint_cross_attention`."""

    def __init__(self, clips: int, da: int, dv: int, hidden: int, iterations: int, shared_weights: bool = False,
                 backend: str = "auto") -> None:
        super().__init__(jca_op.weight_shapes(clips, da, dv, {"k": hidden}), iterations, shared_weights, backend)

    def forward(self, xa: Tensor, xv: Tensor) -> tuple[Tensor, Tensor]:
        return joint_cross_attention(*self._operands(xa, xv), iterations=self.iterations, backend=self.backend)


class _ReleasedIteration(nn.Module):
    """One iteration of the authors' released block: every map is an `nn.Linear` with bias."""

    def __init__(self, clips: int, da: int, dv: int, dropout: float) -> None:
        super().__init__()
        d = da + dv
        self.joint = nn.Linear(d, d)  # the J projection
        self.key = nn.ModuleDict({"a": nn.Linear(clips, clips), "v": nn.Linear(clips, clips)})  # W_ja, W_jv over clips
        self.value = nn.ModuleDict({"a": nn.Linear(da, da), "v": nn.Linear(dv, dv)})  # W_ca, W_cv
        self.out = nn.ModuleDict({"a": nn.Linear(d, da), "v": nn.Linear(d, dv)})  # W_ha, W_hv
        self.dropout = nn.Dropout(dropout)

    def forward(self, xa: Tensor, xv: Tensor) -> tuple[Tensor, Tensor]:
        joint = self.joint(torch.cat([xa, xv], dim=-1))  # [B, L, d]
        scale = math.sqrt(joint.shape[-1])
        out = []
        for m, x in (("a", xa), ("v", xv)):
            corr = self.dropout(torch.tanh(self.key[m](x.mT) @ joint / scale))  # [B, dm, d]
            att = torch.relu(torch.tanh(self.value[m](x) @ corr))  # [B, L, d]
            out.append(x + self.dropout(torch.relu(self.out[m](att))))
        return out[0], out[1]


class ReleasedJointAttention(nn.Module):
    """The fusion of the authors' released training code (fusion="released"), one weight set per
    iteration as theirs: the paper's block plus a J projection, biases on every map, tanh before
    and ReLU after, dropout on `C` and after the output projection. Plain PyTorch."""

    def __init__(self, clips: int, da: int, dv: int, iterations: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_ReleasedIteration(clips, da, dv, dropout) for _ in range(iterations))

    def forward(self, xa: Tensor, xv: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.layers:
            xa, xv = layer(xa, xv)
        return xa, xv
