"""torch.distributed for the CLIs: process-group setup from torchrun's environment, sharding, and
the collectives the training loop needs. Every helper also works in a single process.

The training loss is computed over the *global* batch: each process all-gathers the predictions
(with gradient, `gather_with_grad`) and labels, and evaluates the loss on the concatenation, so
every process holds the loss a single process would compute on the whole batch. Its gradient with
respect to the local predictions is the local slice of that loss's gradient; DDP then averages
parameter gradients over the W processes, so the local slice is scaled by W to turn the average
into the sum. This makes training with W processes match one process with the same global batch
for any loss, including CCC, which is not a mean over samples and so does not decompose per rank.

BatchNorm is made global the same way (`data_parallel` converts it to `GlobalBatchNorm`): batch
statistics and running statistics are over the global batch, so they too are one process's, and
the running statistics, being updated identically, stay identical on every rank.
"""

from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from rja_models.training.sync_batchnorm import GlobalBatchNorm


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """`auto` is the process's GPU under torchrun if CUDA is available, else the CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device_spec: str) -> DistContext:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return DistContext(rank, world, local_rank, device)


def data_parallel(model: nn.Module, ctx: DistContext) -> nn.Module:
    """`model` itself in one process; with W > 1, `model` with its BatchNorm layers made global (in
    place, keeping parameters, buffers and state-dict keys) wrapped in DistributedDataParallel."""
    if not ctx.distributed:
        return model
    GlobalBatchNorm.convert(model)
    # No buffer broadcast before every forward (buffers are still broadcast once, at construction): global
    # BatchNorm updates the running stats identically on every rank, and the end-of-training digest check
    # would otherwise hide a desync. torch 2.13 renamed the option.
    name = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
        else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
                                   **{name: False})


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """`[obj of rank 0, obj of rank 1, ...]` on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_gather(ctx: DistContext, x: Tensor) -> Tensor:
    """Concatenation over ranks along dim 0 (same shape on every rank), without gradient."""
    if not ctx.distributed:
        return x
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, rank: int, world: int) -> Tensor:
        ctx.rank, ctx.world, ctx.rows = rank, world, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        # Every rank computed the same loss on the same gathered tensor, so its gradient on this
        # rank's slice is already the global one; times W because DDP averages over ranks.
        rows = slice(ctx.rank * ctx.rows, (ctx.rank + 1) * ctx.rows)
        return grad[rows] * ctx.world, None, None


def gather_with_grad(ctx: DistContext, x: Tensor) -> Tensor:
    """`all_gather` whose backward returns this rank's slice of the gradient, scaled for DDP's mean."""
    if not ctx.distributed:
        return x
    return _GatherWithGrad.apply(x, ctx.rank, ctx.world_size)


class ShardSampler(Sampler[int]):
    """Indices `rank, rank + W, ...` in order: every item exactly once over all ranks (evaluation;
    unlike DistributedSampler it never repeats items to even out the shards)."""

    def __init__(self, length: int, ctx: DistContext) -> None:
        self.indices = list(range(ctx.rank, length, ctx.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
