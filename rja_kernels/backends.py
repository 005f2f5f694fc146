"""Registry of the operator's backends.

A backend supplies the forward and backward of the whole operator (all iterations). The custom op
`rja::recursive_joint_attention` dispatches on device through torch.library and then on the
backend name through this registry, so every backend shares one op, one autograd formula and one
fake implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# Backends return new contiguous tensors (never views of their inputs), as the fake kernels say.
# forward(xa, xv, weights, iterations) -> (xa_out, xv_out, xa_iters [T,B,L,da], xv_iters [T,B,L,dv])
ForwardFn = Callable[[Tensor, Tensor, tuple[Tensor, ...], int], tuple[Tensor, Tensor, Tensor, Tensor]]
# backward(grad_xa, grad_xv, xa_iters, xv_iters, weights) -> grads of (xa, xv, *weights)
BackwardFn = Callable[[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]


@dataclass(frozen=True)
class Backend:
    name: str
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

_registry: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    if backend.name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend name {backend.name!r}; expected one of {BACKEND_NAMES}")
    _registry[backend.name] = backend


def get_backend(name: str) -> Backend:
    return _registry[name]


def why_unavailable(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None if backend `name` can run inputs on `device` with `dtype`, else the reason."""
    backend = _registry.get(name)
    if backend is None:
        return f"backend {name!r} is not registered in this installation"
    return backend.unsupported(device, dtype)


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete backend that runs the inputs: `name` itself, or the best one for "auto"."""
    if name == "auto":
        for candidate in AUTO_PREFERENCE.get(device.type, ("reference",)):
            if why_unavailable(candidate, device, dtype) is None:
                return candidate
        raise BackendUnavailableError(
            f"no rja backend runs {dtype} tensors on device {device}: "
            + "; ".join(f"{n}: {why_unavailable(n, device, dtype)}" for n in BACKEND_NAMES)
        )
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {name!r}")
    reason = why_unavailable(name, device, dtype)
    if reason is not None:
        raise BackendUnavailableError(f"backend={name!r} cannot run {dtype} tensors on {device}: {reason}")
    return name


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can run inputs of this device and dtype here."""
    device = torch.device(device)
    return [n for n in BACKEND_NAMES if why_unavailable(n, device, dtype) is None]
