"""Test support shared by the test suite and the benchmarks: inputs of given sizes and the
low-precision tolerance rule. Not part of the operator's API."""

from __future__ import annotations

import torch
from torch import Tensor

from rja_kernels.op import WEIGHT_NAMES


def make_inputs(
    b: int, seq: int, da: int, dv: int, k: int, iterations: int, tw: int | None = None,
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0,
    requires_grad: bool = False,
) -> dict[str, Tensor]:
    """Features ~ N(0, 1) and Xavier-scaled weights, as the model initialises them, so the
    tanh and relu see realistic (neither saturated nor linear) pre-activations."""
    tw = iterations if tw is None else tw
    gen = torch.Generator().manual_seed(seed)
    d = da + dv
    shapes = {
        "xa": (b, seq, da), "xv": (b, seq, dv),
        "w_ja": (tw, seq, seq), "w_jv": (tw, seq, seq),
        "w_a": (tw, k, seq), "w_v": (tw, k, seq),
        "w_ca": (tw, k, d), "w_cv": (tw, k, d),
        "w_ha": (tw, seq, k), "w_hv": (tw, seq, k),
    }
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if name in WEIGHT_NAMES:
            t *= (2.0 / (shape[1] + shape[2])) ** 0.5
        out[name] = t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
    return out


def low_precision_tolerance(ref_low: Tensor, ref_exact: Tensor, factor: float = 2.0, floor: float = 1e-5
                            ) -> float:
    """flash-attention's rule: a kernel in a low-precision dtype may be off from the exact result
    by at most `factor` times the error the reference itself makes in that dtype."""
    return factor * (ref_low.double() - ref_exact.double()).abs().max().item() + floor
