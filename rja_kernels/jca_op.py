"""The JCA operator, `rja::joint_cross_attention` (docs/SPEC.md section 2): the block of the authors'
earlier joint cross-attention papers (their `models/cam.py`)."""

from __future__ import annotations

from torch import Tensor

from rja_kernels.op import FusedOperator, OperatorSpec
from rja_kernels.reference import joint_cross_attention_reference

WEIGHT_NAMES = ("w_ja", "w_jv", "w_a", "w_v", "w_ca", "w_cv", "w_ha", "w_hv")
WEIGHT_LAYOUTS = {
    "w_ja": "[L, L]", "w_jv": "[L, L]",
    "w_a": "[k, L]", "w_v": "[k, L]",
    "w_ca": "[k, da + dv]", "w_cv": "[k, da + dv]",
    "w_ha": "[L, k]", "w_hv": "[L, k]",
}


def weight_shapes(seq: int, da: int, dv: int, sizes: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Shape of one iteration's slice of each weight for hidden size `sizes["k"]`."""
    d, k = da + dv, sizes["k"]
    return {
        "w_ja": (seq, seq), "w_jv": (seq, seq),
        "w_a": (k, seq), "w_v": (k, seq),
        "w_ca": (k, d), "w_cv": (k, d),
        "w_ha": (seq, k), "w_hv": (seq, k),
    }


SPEC = OperatorSpec(
    name="joint_cross_attention", weight_names=WEIGHT_NAMES, weight_layouts=WEIGHT_LAYOUTS,
    weight_shapes=weight_shapes, size_weight="w_a", extra_sizes={"k": 1}, options=(),
    reference=joint_cross_attention_reference,
)
OPERATOR = FusedOperator(SPEC)


def joint_cross_attention(
    xa: Tensor, xv: Tensor,
    w_ja: Tensor, w_jv: Tensor, w_a: Tensor, w_v: Tensor,
    w_ca: Tensor, w_cv: Tensor, w_ha: Tensor, w_hv: Tensor,
    iterations: int = 2, backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Recursive joint cross-attention in the JCA form (docs/SPEC.md section 2).

    Args:
        xa: audio features `[B, L, da]`; xv: visual features `[B, L, dv]`.
        w_ja, w_jv: `[Tw, L, L]`; w_a, w_v: `[Tw, k, L]`; w_ca, w_cv: `[Tw, k, da+dv]`;
        w_ha, w_hv: `[Tw, L, k]`, with `Tw` 1 (shared by all iterations) or `iterations`.
        backend: as for `recursive_joint_attention`.

    Returns:
        `(xa_T, xv_T)`, the features after the last iteration, in the inputs' dtype.
    """
    return OPERATOR(xa, xv, (w_ja, w_jv, w_a, w_v, w_ca, w_cv, w_ha, w_hv), iterations, {}, backend)
