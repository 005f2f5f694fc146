"""Fused recursive joint cross-attention (Praveen et al., ICASSP 2023) for PyTorch.

`recursive_joint_attention` is the operator of SPEC.md; importing this package registers the
`rja::recursive_joint_attention` custom op and every backend built in this installation.
"""

# Each backend module registers its backend on import (an unbuilt one reports why it cannot run).
from rja_kernels import cpu, cuda, reference, triton_rja  # noqa: F401
from rja_kernels.backends import BackendUnavailableError, available_backends
from rja_kernels.op import recursive_joint_attention
from rja_kernels.reference import recursive_joint_attention_reference

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "recursive_joint_attention",
    "recursive_joint_attention_reference",
]
