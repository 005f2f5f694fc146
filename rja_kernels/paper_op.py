"""The paper's operator, `rja::recursive_joint_attention` (docs/SPEC.md section 1, Eq. 1-6)."""

from __future__ import annotations

from torch import Tensor

from rja_kernels.op import FusedOperator, OperatorSpec
from rja_kernels.reference import recursive_joint_attention_reference

WEIGHT_NAMES = ("w_ja", "w_jv", "w_ca", "w_cv", "w_ha", "w_hv")
WEIGHT_LAYOUTS = {
    "w_ja": "[L, L]", "w_jv": "[L, L]",
    "w_ca": "[da, da]", "w_cv": "[dv, dv]",
    "w_ha": "[da + dv, da]", "w_hv": "[da + dv, dv]",
}


def weight_shapes(seq: int, da: int, dv: int, sizes: dict[str, int] | None = None) -> dict[str, tuple[int, int]]:
    """Shape of one iteration's slice of each weight (`WEIGHT_LAYOUTS` with the sizes filled in)."""
    d = da + dv
    return {"w_ja": (seq, seq), "w_jv": (seq, seq), "w_ca": (da, da), "w_cv": (dv, dv),
            "w_ha": (d, da), "w_hv": (d, dv)}


SPEC = OperatorSpec(
    name="recursive_joint_attention", weight_names=WEIGHT_NAMES, weight_layouts=WEIGHT_LAYOUTS,
    weight_shapes=weight_shapes, size_weight="w_ja", extra_sizes={}, options=("h_tanh", "out_relu"),
    reference=recursive_joint_attention_reference,
)
OPERATOR = FusedOperator(SPEC)


def recursive_joint_attention(
    xa: Tensor, xv: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
    iterations: int = 2, h_tanh: bool = False, out_relu: bool = False, backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Recursive joint attention as the paper's Eq. 1-6 define it (docs/SPEC.md section 1).

    Args:
        xa: audio features `[B, L, da]`; xv: visual features `[B, L, dv]`.
        w_ja, w_jv: `[Tw, L, L]`; w_ca: `[Tw, da, da]`; w_cv: `[Tw, dv, dv]`; w_ha: `[Tw, da+dv, da]`;
            w_hv: `[Tw, da+dv, dv]`, with `Tw` 1 (shared by all iterations) or `iterations`.
        h_tanh: attention map `relu(tanh(G))` instead of `relu(G)` (the authors' released code).
        out_relu: residual update `x + relu(U)` instead of `x + U` (the authors' released code).
        backend: "auto" (fastest available for the inputs' device and dtype), "reference",
            "cpu", "triton" or "cuda". A forced backend that cannot run raises
            `BackendUnavailableError` with the reason.

    Returns:
        `(xa_T, xv_T)`, the features after the last iteration, in the inputs' dtype.
    """
    return OPERATOR(xa, xv, (w_ja, w_jv, w_ca, w_cv, w_ha, w_hv), iterations,
                    {"h_tanh": h_tanh, "out_relu": out_relu}, backend)
