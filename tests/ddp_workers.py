"""Functions that test_ddp runs in spawned processes; a module of its own so that those processes
import little."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from rja_models.training.sync_batchnorm import GlobalBatchNorm

# (BatchNorm class, input shape, momentum, affine)
CASES = [
    (nn.BatchNorm2d, (6, 5, 3, 4), 0.1, True),
    (nn.BatchNorm2d, (6, 5, 3, 4), None, True),
    (nn.BatchNorm3d, (6, 5, 2, 3, 4), 0.1, False),
]


def global_batchnorm_worker(rank: int, world: int, port: int) -> None:
    """Rank 0 holds rows 0-3 of the batch and rank 1 rows 4-5; GlobalBatchNorm on the shards must give
    nn.BatchNorm's outputs, input and (DDP-averaged) parameter gradients, and running stats on the whole."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for cls, shape, momentum, affine in CASES:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=g) * 3 + 2
            grad = torch.randn(shape, generator=g)
            reference = cls(shape[1], momentum=momentum, affine=affine)
            if affine:
                with torch.no_grad():
                    reference.weight.uniform_(0.5, 1.5, generator=g)
                    reference.bias.normal_(generator=g)
            ours = GlobalBatchNorm.convert(nn.Sequential(cls(shape[1], momentum=momentum, affine=affine)))[0]
            assert isinstance(ours, GlobalBatchNorm)
            ours.load_state_dict(reference.state_dict())
            rows = slice(0, 4) if rank == 0 else slice(4, 6)
            for _ in range(2):  # the second step starts from updated running stats
                x_ref, x_ours = x.clone().requires_grad_(), x[rows].clone().requires_grad_()
                y_ref, y_ours = reference(x_ref), ours(x_ours)
                (y_ref * grad).sum().backward()
                (y_ours * grad[rows] * world).sum().backward()  # the global loss's gradient, scaled as DDP expects
                torch.testing.assert_close(y_ours, y_ref[rows].detach())
                torch.testing.assert_close(x_ours.grad, x_ref.grad[rows] * world)
                if affine:
                    for p_ours, p_ref in ((ours.weight, reference.weight), (ours.bias, reference.bias)):
                        mean = p_ours.grad.clone()
                        dist.all_reduce(mean)  # what DDP does with the local parameter gradients
                        torch.testing.assert_close(mean / world, p_ref.grad)
                        p_ours.grad = p_ref.grad = None
                for key, value in reference.state_dict().items():
                    torch.testing.assert_close(ours.state_dict()[key], value, msg=key)
            ours.eval()
            reference.eval()
            torch.testing.assert_close(ours(x[rows]), reference(x)[rows])
    finally:
        dist.destroy_process_group()
