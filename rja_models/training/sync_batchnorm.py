"""Batch normalisation over the global batch of all processes, on any device and process group.

`torch.nn.SyncBatchNorm` does this on GPUs only (its forward refuses CPU tensors under gloo), so
DDP on the CPU would otherwise normalise each process's part of the batch with its own statistics
and update per-process running statistics: N processes would not train as one process would, and
the replicas' buffers would drift apart. `GlobalBatchNorm` keeps `_BatchNorm`'s parameters, buffers
and state-dict keys (checkpoints load into plain BatchNorm), behaves exactly like it in one process
and in eval mode, and in distributed training:

* forward: each process computes the per-channel element count, mean and sum of squared deviations
  of its part; these are all-gathered and combined (Chan et al.'s parallel formula, in float64, in
  rank order) into the global mean and biased variance, the same bits on every rank. The running
  stats are updated with them (unbiased variance over the global count), so they stay identical
  on every rank and equal one process's.
* backward: the per-channel sums of the output gradient and of gradient times normalised input are
  summed over ranks, giving the input gradient of the global normalisation. The weight and bias
  gradients stay local: DDP averages them, and with `gather_with_grad`'s scaling (every rank's
  output gradient is W times its share of the global loss's) that average is the global gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def _gather_rows(rows: Tensor, group: Any, world: int) -> Tensor:
    """`[W, *rows.shape]`: every rank's `rows`, in rank order (so every rank combines them identically)."""
    parts = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(parts, rows.contiguous(), group=group)
    return torch.stack(parts)


class _GlobalBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group: Any,
                world: int) -> tuple[Tensor, Tensor, Tensor]:
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = x.numel() // x.shape[1]
        # A rank with an empty shard contributes count 0 (its mean would be NaN and poison the sums).
        mean = xf.mean(dims) if count else xf.new_zeros(x.shape[1])
        m2 = (xf - mean.view(shape)).square().sum(dims)
        local = torch.cat([torch.tensor([count], dtype=torch.float64, device=x.device), mean.double(), m2.double()])
        stats = _gather_rows(local, group, world)  # [W, 1 + 2C]
        counts, means, m2s = stats[:, :1], stats[:, 1 : 1 + x.shape[1]], stats[:, 1 + x.shape[1] :]
        total = counts.sum()
        global_mean = (counts * means).sum(0) / total
        global_m2 = (m2s + counts * (means - global_mean).square()).sum(0)
        var = (global_m2 / total).float()
        global_mean = global_mean.float()
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.float()
        y = (xf - global_mean.view(shape)) * scale.view(shape)
        if bias is not None:
            y = y + bias.float().view(shape)
        ctx.save_for_backward(x, weight, global_mean, invstd)
        ctx.group, ctx.world, ctx.total, ctx.has_bias = group, world, float(total), bias is not None
        ctx.param_dtype = (weight if weight is not None else bias if bias is not None else x).dtype
        unbiased = (global_m2 / (total - 1).clamp(min=1)).float()
        ctx.mark_non_differentiable(global_mean, unbiased)
        return y.to(x.dtype), global_mean, unbiased

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        g = grad.float()
        xhat = (x.float() - mean.view(shape)) * invstd.view(shape)
        sum_g, sum_g_xhat = g.sum(dims), (g * xhat).sum(dims)
        # Every rank runs the same graph, so this collective is reached in the same order on all.
        total = _gather_rows(torch.cat([sum_g, sum_g_xhat]), ctx.group, ctx.world).sum(0)
        channels = x.shape[1]
        mean_g, mean_g_xhat = total[:channels] / ctx.total, total[channels:] / ctx.total
        scale = invstd if weight is None else invstd * weight.float()
        grad_x = (g - mean_g.view(shape) - xhat * mean_g_xhat.view(shape)) * scale.view(shape)
        grad_weight = sum_g_xhat.to(ctx.param_dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_g.to(ctx.param_dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x.to(x.dtype), grad_weight, grad_bias, None, None, None


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm1d/2d/3d whose training statistics are over the batch of every process in `process_group`
    (default: the whole world) when torch.distributed is initialised; see the module docstring."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _world(self) -> int:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def forward(self, input: Tensor) -> Tensor:
        world = self._world()
        if world == 1:
            return super().forward(input)  # plain BatchNorm: one process, or eval mode
        self._check_input_dim(input)
        factor = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as _BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        y, mean, var = _GlobalBatchNormFunction.apply(input, self.weight, self.bias, self.eps, self.process_group,
                                                      world)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():  # the same expression as the CPU BatchNorm kernel's
                self.running_mean.copy_(factor * mean + (1 - factor) * self.running_mean)
                self.running_var.copy_(factor * var + (1 - factor) * self.running_var)
        return y

    @classmethod
    def convert(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """`module` with every BatchNorm layer replaced (in place, below the top) by a GlobalBatchNorm that
        shares its parameters and buffers, so optimizers and references to them stay valid."""
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, (cls, nn.SyncBatchNorm)):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                      process_group)
            if module.affine:
                out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, cls.convert(child, process_group))
        return out
