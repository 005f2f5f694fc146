"""What both operators share: argument checks, the `torch.library` custom ops (forward, backward,
fake kernels, autograd wiring) and backend dispatch. `paper_op` and `jca_op` each describe one
operator with an `OperatorSpec`; `FusedOperator` turns that into the ops.

Arguments are checked once, here, before dispatch; backends may assume valid inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch._C._functorch import TransformType, get_interpreter_stack

from rja_kernels.backends import get_backend, resolve_backend


@dataclass(frozen=True)
class OperatorSpec:
    name: str  # the op is rja::<name>
    weight_names: tuple[str, ...]
    # The SPEC's layout of one iteration's slice of each weight, e.g. "[L, L]" (messages only).
    weight_layouts: dict[str, str]
    # (L, da, dv, sizes) -> shape of one iteration's slice of each weight.
    weight_shapes: Callable[[int, int, int, dict[str, int]], dict[str, tuple[int, int]]]
    # The weight whose shape gives Tw (dim 0) and any extra size, e.g. {"k": 1} for the JCA form.
    size_weight: str
    extra_sizes: dict[str, int]
    options: tuple[str, ...]  # boolean switches, passed to backends by name
    # Plain autograd PyTorch (xa, xv, *weights, iterations, **options): double backward.
    reference: Callable[..., tuple[Tensor, Tensor]]


def _expect_shape(name: str, t: Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {meaning} = {list(expected)}, got {list(t.shape)}")


def check_inputs(spec: OperatorSpec, xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int,
                 options: dict[str, bool]) -> None:
    """Raise TypeError/ValueError naming the first argument that breaks the SPEC's contract."""
    names = ("xa", "xv", *spec.weight_names)
    for name, t in zip(names, (xa, xv, *weights)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
        if t.dtype != xa.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but xa has {xa.dtype}; all inputs need one dtype")
        if t.device != xa.device:
            raise ValueError(f"{name} is on {t.device} but xa is on {xa.device}; all inputs need one device")
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D, got shape {list(t.shape)}")
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for name, value in options.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")

    b, seq, da = xa.shape
    if xv.shape[:2] != xa.shape[:2]:
        raise ValueError(f"xv must have shape [B, L, dv] with B={b}, L={seq} as in xa, got {list(xv.shape)}")
    dv = xv.shape[2]
    for name, size in (("L", seq), ("da", da), ("dv", dv)):
        if size < 1:
            raise ValueError(f"{name} must be >= 1, got xa {list(xa.shape)}, xv {list(xv.shape)}")
    source = weights[spec.weight_names.index(spec.size_weight)]
    tw = source.shape[0]
    if tw not in (1, iterations):
        raise ValueError(
            f"weights must hold Tw = 1 (shared) or Tw = iterations = {iterations} sets, "
            f"got Tw = {tw} in {spec.size_weight} {list(source.shape)}"
        )
    sizes = {}
    for size, dim in spec.extra_sizes.items():
        sizes[size] = source.shape[dim]
        if sizes[size] < 1:
            raise ValueError(f"{size} ({spec.size_weight}.shape[{dim}]) must be >= 1, got {sizes[size]}")
    shapes = spec.weight_shapes(seq, da, dv, sizes)
    for name, w in zip(spec.weight_names, weights):
        _expect_shape(name, w, (tw, *shapes[name]), f"[Tw, {spec.weight_layouts[name][1:]}")


def _forward_mode_active(tensors: tuple[Tensor, ...]) -> bool:
    """Whether forward-mode AD tracks these inputs: `torch.func.jvp` (at any functorch level) or a
    `torch.autograd.forward_ad` dual tensor."""
    if torch.compiler.is_compiling():
        return False
    if any(level.key() == TransformType.Jvp for level in get_interpreter_stack() or ()):
        return True
    return any(fwAD.unpack_dual(t).tangent is not None for t in tensors)


class FusedOperator:
    """The custom ops `rja::<name>` and `rja::<name>_backward` of one operator, with fake kernels
    and autograd, dispatching to the operator's backends by name."""

    def __init__(self, spec: OperatorSpec) -> None:
        self.spec = spec
        nw, no = len(spec.weight_names), len(spec.options)
        self._nw = nw
        weights = ", ".join(f"Tensor {n}" for n in spec.weight_names)
        options = "".join(f", bool {o}" for o in spec.options)
        self.forward_op = torch.library.custom_op(
            f"rja::{spec.name}", self._forward, mutates_args=(), device_types=("cpu", "cuda"),
            schema=f"(Tensor xa, Tensor xv, {weights}, int iterations{options}, str backend)"
                   " -> (Tensor, Tensor, Tensor, Tensor)")
        self.backward_op = torch.library.custom_op(
            f"rja::{spec.name}_backward", self._backward_kernel, mutates_args=(), device_types=("cpu", "cuda"),
            schema=f"(Tensor grad_xa, Tensor grad_xv, Tensor xa_iters, Tensor xv_iters, {weights}{options}, "
                   f"str backend) -> ({', '.join(['Tensor'] * (2 + nw))})")
        self.forward_op.register_fake(self._forward_fake)
        self.backward_op.register_fake(self._backward_fake)
        self.forward_op.register_autograd(self._autograd_backward, setup_context=self._setup_context)
        self.backward_op.register_autograd(self._double_backward_unsupported, setup_context=self._keep_backend)
        self._split_options = lambda args: dict(zip(spec.options, args[:no]))

    # Forward: (xa, xv, *weights, iterations, *options, backend)
    def _forward(self, *args) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        xa, xv, weights, iterations = args[0], args[1], args[2:2 + self._nw], args[2 + self._nw]
        options = self._split_options(args[3 + self._nw:-1])
        return get_backend(self.spec.name, args[-1]).forward(xa, xv, weights, iterations, **options)

    def _forward_fake(self, *args) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        xa, xv, iterations = args[0], args[1], args[2 + self._nw]
        return (
            torch.empty_like(xa, memory_format=torch.contiguous_format),
            torch.empty_like(xv, memory_format=torch.contiguous_format),
            xa.new_empty((iterations, *xa.shape)),
            xv.new_empty((iterations, *xv.shape)),
        )

    # Backward: (grad_xa, grad_xv, xa_iters, xv_iters, *weights, *options, backend)
    def _backward_kernel(self, *args) -> tuple[Tensor, ...]:
        weights, options = args[4:4 + self._nw], self._split_options(args[4 + self._nw:-1])
        return tuple(get_backend(self.spec.name, args[-1]).backward(*args[:4], weights, **options))

    def _backward_fake(self, *args) -> tuple[Tensor, ...]:
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                     for t in (args[2][0], args[3][0], *args[4:4 + self._nw]))

    def _setup_context(self, ctx, inputs, output) -> None:
        nw = self._nw
        ctx.iterations, ctx.options, ctx.backend = inputs[2 + nw], inputs[3 + nw:-1], inputs[-1]
        ctx.mark_non_differentiable(output[2], output[3])
        # The reference backend also keeps the inputs themselves: a second derivative needs the graph
        # from them (see `_autograd_backward`). The kernels' backward needs only the iterations' features.
        keep = inputs[:2] if ctx.backend == "reference" else ()
        ctx.save_for_backward(output[2], output[3], *inputs[2:2 + nw], *keep)

    def _autograd_backward(self, ctx, grad_xa, grad_xv, _grad_xa_iters, _grad_xv_iters):
        xa_iters, xv_iters, *rest = ctx.saved_tensors
        weights = rest[:self._nw]
        tail = (None,) * (2 + len(self.spec.options))  # iterations, options, backend
        if torch.is_grad_enabled() and ctx.backend == "reference":
            # create_graph=True: differentiate the reference again with autograd, so the gradient
            # is itself differentiable (gradient penalties, higher-order methods).
            return (*self._differentiable_grads(ctx, rest[self._nw:], weights, grad_xa, grad_xv), *tail)
        # Outputs unused by the loss arrive as None; the kernels want dense gradients.
        grad_xa = torch.zeros_like(xa_iters[0]) if grad_xa is None else grad_xa.contiguous()
        grad_xv = torch.zeros_like(xv_iters[0]) if grad_xv is None else grad_xv.contiguous()
        grads = self.backward_op(grad_xa, grad_xv, xa_iters, xv_iters, *weights, *ctx.options, ctx.backend)
        return (*grads, *tail)

    def _differentiable_grads(self, ctx, features, weights, grad_xa, grad_xv) -> tuple[Tensor | None, ...]:
        inputs = [t if t.requires_grad else t.detach().requires_grad_() for t in (*features, *weights)]
        outputs = self.spec.reference(*inputs, ctx.iterations, **self._split_options(ctx.options))
        pairs = [(o, g) for o, g in zip(outputs, (grad_xa, grad_xv)) if g is not None]
        grads = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs],
                                    create_graph=True, allow_unused=True)
        return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs))

    @staticmethod
    def _keep_backend(ctx, inputs, output) -> None:
        ctx.backend = inputs[-1]

    def _double_backward_unsupported(self, ctx, *grads):
        raise RuntimeError(
            f"double backward through rja::{self.spec.name} is not supported on backend={ctx.backend!r}: its "
            "fused backward kernel is not differentiable. For gradients of gradients (create_graph=True: "
            "gradient penalties, higher-order methods) call the operator with backend='reference'."
        )

    def __call__(self, xa: Tensor, xv: Tensor, weights: tuple[Tensor, ...], iterations: int,
                 options: dict[str, bool], backend: str) -> tuple[Tensor, Tensor]:
        check_inputs(self.spec, xa, xv, weights, iterations, options)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        name = resolve_backend(self.spec.name, backend, xa.device, xa.dtype)
        if _forward_mode_active((xa, xv, *weights)):
            # The kernels have no forward-mode formula: a jvp runs the reference's plain PyTorch math,
            # whose every op has one (otherwise the tangent would silently come out as zero).
            return self.spec.reference(xa, xv, *weights, iterations, **options)
        xa_out, xv_out, _, _ = self.forward_op(xa, xv, *weights, iterations,
                                               *(options[o] for o in self.spec.options), name)
        return xa_out, xv_out
