"""One training step (forward, backward, optimizer step) of the full model on CPU, fused "cpu"
backend against "reference"; and of the fusion part alone on precomputed features at the paper's
sizes, where the operator dominates.

    pytest benchmarks/test_bench_model.py                       # timings
    pytest benchmarks/test_bench_model.py --benchmark-disable   # one step each (CI smoke)
"""

from __future__ import annotations

import pytest
import torch

import rja_kernels
from rja_models.config import ModelConfig
from rja_models.metrics import ccc_loss
from rja_models.model import RJAModel

BACKENDS = ("reference", "cpu")
# Full model: B=2 sub-sequences of L=4 clips of F=4 frames at 64x64 (a 4x4 R3D-18 map; 112x112 takes
# ~3x longer, 8-30 s a step on 2 cores), 0.25 s of 16 kHz audio per clip.
# Fusion only: the SPEC's "paper" size, B=64, L=16, da=dv=512, k=32, T=2.
FULL = {"b": 2, "clips": 4, "frames": 4, "size": 64, "samples": 4000}
FUSION = {"b": 64, "clips": 16}


def _skip_unavailable(backend: str) -> None:
    if backend not in rja_kernels.available_backends("cpu", torch.float32):
        pytest.skip(f"rja backend {backend!r} is not available on CPU in this installation "
                    f"(available: {rja_kernels.available_backends('cpu', torch.float32)})")


def _step_fn(model: RJAModel, inputs: dict[str, torch.Tensor], labels: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = ccc_loss(model(**inputs)["frame"], labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_model_train_step(benchmark, backend):
    _skip_unavailable(backend)
    torch.manual_seed(0)
    b, clips, frames, size = FULL["b"], FULL["clips"], FULL["frames"], FULL["size"]
    model = RJAModel(ModelConfig(clips=clips, clip_frames=frames, image_size=size, backend=backend)).train()
    inputs = {"frames": torch.rand(b, clips, 3, frames, size, size), "audio": torch.randn(b, clips, FULL["samples"])}
    labels = torch.rand(b, clips * frames, 2) * 2 - 1
    step = _step_fn(model, inputs, labels)
    if not benchmark.disabled:
        step()  # warm-up: oneDNN primitive creation for every conv shape
    loss = benchmark.pedantic(step, rounds=3, iterations=1)
    assert torch.isfinite(torch.tensor(loss))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fusion_train_step_on_features(benchmark, backend):
    _skip_unavailable(backend)
    torch.manual_seed(0)
    b, clips = FUSION["b"], FUSION["clips"]
    model = RJAModel(ModelConfig(clips=clips, use_backbones=False, backend=backend)).train()
    inputs = {"xa": torch.randn(b, clips, 512), "xv": torch.randn(b, clips, 512)}
    labels = torch.rand(b, clips * model.config.clip_frames, 2) * 2 - 1
    step = _step_fn(model, inputs, labels)
    if not benchmark.disabled:
        step()
    loss = benchmark.pedantic(step, rounds=3, iterations=1)
    assert torch.isfinite(torch.tensor(loss))
