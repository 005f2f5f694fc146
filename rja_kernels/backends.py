"""Registry of the operators' backends.

A backend supplies the forward and backward of a whole operator (all iterations). Each custom op
(`rja::recursive_joint_attention`, `rja::joint_cross_attention`) dispatches on device through
torch.library and then on the backend name through this registry, so every backend of an operator
shares one op, one autograd formula and one fake implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# Backends return new contiguous tensors (never views of their inputs), as the fake kernels say.
# forward(xa, xv, weights, iterations, **options) -> (xa_out, xv_out, xa_iters [T,B,L,da], xv_iters [T,B,L,dv])
ForwardFn = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]
# backward(grad_xa, grad_xv, xa_iters, xv_iters, weights, **options) -> grads of (xa, xv, *weights)
BackwardFn = Callable[..., tuple[Tensor, ...]]
# `options` are the operator's boolean switches by name (the paper form's h_tanh and out_relu).

OPERATORS = ("recursive_joint_attention", "joint_cross_attention")


@dataclass(frozen=True)
class Backend:
    name: str
    operator: str
    forward: ForwardFn
    backward: BackwardFn
    # Why this backend cannot run inputs of this device and dtype, or None when it can.
    unsupported: Callable[[torch.device, torch.dtype], str | None]


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run the given inputs; the message says why."""


BACKEND_NAMES = ("reference", "cpu", "triton", "cuda")
# backend="auto" takes the first backend of this list that can run the inputs. On CUDA, Triton
# measured faster than the CUDA C++ kernels on an H100 at the benchmark sizes (README table).
AUTO_PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}

_registry: dict[tuple[str, str], Backend] = {}


def register_backend(backend: Backend) -> None:
    if backend.name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend name {backend.name!r}; expected one of {BACKEND_NAMES}")
    if backend.operator not in OPERATORS:
        raise ValueError(f"unknown operator {backend.operator!r}; expected one of {OPERATORS}")
    _registry[backend.operator, backend.name] = backend


def get_backend(operator: str, name: str) -> Backend:
    return _registry[operator, name]


def why_unavailable(name: str, device: torch.device, dtype: torch.dtype,
                    operator: str = "recursive_joint_attention") -> str | None:
    """None if backend `name` can run `operator` on inputs on `device` with `dtype`, else the reason."""
    backend = _registry.get((operator, name))
    if backend is None:
        return f"backend {name!r} of {operator} is not registered in this installation"
    return backend.unsupported(device, dtype)


def resolve_backend(operator: str, name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete backend that runs the inputs: `name` itself, or the best one for "auto"."""
    if name == "auto":
        for candidate in AUTO_PREFERENCE.get(device.type, ("reference",)):
            if why_unavailable(candidate, device, dtype, operator) is None:
                return candidate
        raise BackendUnavailableError(
            f"no rja backend runs {operator} on {dtype} tensors on device {device}: "
            + "; ".join(f"{n}: {why_unavailable(n, device, dtype, operator)}" for n in BACKEND_NAMES)
        )
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {name!r}")
    reason = why_unavailable(name, device, dtype, operator)
    if reason is not None:
        raise BackendUnavailableError(f"backend={name!r} cannot run {dtype} tensors on {device}: {reason}")
    return name


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       operator: str = "recursive_joint_attention") -> list[str]:
    """Names of the backends that can run `operator` on inputs of this device and dtype here."""
    device = torch.device(device)
    return [n for n in BACKEND_NAMES if why_unavailable(n, device, dtype, operator) is None]
