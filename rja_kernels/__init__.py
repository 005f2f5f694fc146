"""Fused recursive joint attention (Praveen et al., ICASSP 2023) for PyTorch.

Two operators of docs/SPEC.md: `recursive_joint_attention`, the paper's form (Eq. 1-6, the default
everywhere), and `joint_cross_attention`, the JCA form of the authors' earlier papers. Importing
this package registers the `rja::recursive_joint_attention` and `rja::joint_cross_attention` custom
ops and every backend built in this installation.
"""

# Each backend module registers its backends on import (an unbuilt one reports why it cannot run).
from rja_kernels import cpu, cuda, reference, triton_backend  # noqa: F401
from rja_kernels.backends import BackendUnavailableError, available_backends
from rja_kernels.jca_op import joint_cross_attention
from rja_kernels.paper_op import recursive_joint_attention
from rja_kernels.reference import joint_cross_attention_reference, recursive_joint_attention_reference

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "joint_cross_attention",
    "joint_cross_attention_reference",
    "recursive_joint_attention",
    "recursive_joint_attention_reference",
]
