"""Checkpoints: a round trip rebuilds the model bit for bit from the file alone."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rja_models.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from rja_models.config import ModelConfig, TargetConfig
from rja_models.metrics import ccc_loss
from rja_models.model import RJAModel


def train_step(model: RJAModel, optimizer: torch.optim.Optimizer, inputs: dict, labels: torch.Tensor) -> None:
    optimizer.zero_grad()
    ccc_loss(model(**inputs)["frame"], labels).backward()
    optimizer.step()


def test_round_trip_is_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(clips=2, clip_frames=4, image_size=32, shared_weights=True,
                         targets=TargetConfig(("fatigue",), 0.0, 10.0))
    model = RJAModel(config)
    inputs = {"frames": torch.rand(2, 2, 3, 4, 32, 32), "audio": torch.randn(2, 2, 1500)}
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), inputs, torch.rand(2, 8, 1) * 10)
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, model, extra={"epoch": 3, "best": {"mean": 0.5}})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind

    restored, restored_config, ckpt = model_from_checkpoint(path)
    assert restored_config == config and not restored.training
    assert ckpt["extra"] == {"epoch": 3, "best": {"mean": 0.5}}
    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), name  # BN running statistics included
    model.eval()
    with torch.no_grad():
        want, got = model(**inputs), restored(**inputs)
    for key in want:
        assert torch.equal(want[key], got[key])


def test_resume_continues_the_same_run(tmp_path):
    torch.manual_seed(0)
    model = RJAModel(ModelConfig(clips=4, use_backbones=False, da=64, dv=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    inputs = {"xa": torch.randn(3, 4, 64), "xv": torch.randn(3, 4, 32)}
    labels = torch.rand(3, 32, 2) * 2 - 1
    train_step(model, optimizer, inputs, labels)
    scheduler.step()
    save_checkpoint(tmp_path / "c.pt", model, optimizer=optimizer, scheduler=scheduler)

    restored, _, ckpt = model_from_checkpoint(tmp_path / "c.pt")
    optimizer2 = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    optimizer2.load_state_dict(ckpt["optimizer"])
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
    scheduler2.load_state_dict(ckpt["scheduler"])
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 5e-4
    restored.train()
    for m, opt in ((model, optimizer), (restored, optimizer2)):
        torch.manual_seed(1)  # the same dropout masks
        train_step(m, opt, inputs, labels)
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_does_not_need_backbone_files(tmp_path):
    source = tmp_path / "audio.pt"
    torch.save(RJAModel(ModelConfig(fusion="audio", use_backbones=True)).audio_encoder.net.state_dict(), source)
    config = ModelConfig.ablation("audio_only", clips=2, audio_backbone_weights=str(source))
    model = RJAModel(config)
    save_checkpoint(tmp_path / "m.pt", model)
    source.unlink()
    restored, restored_config, _ = model_from_checkpoint(tmp_path / "m.pt")
    assert restored_config.audio_backbone_weights == str(source)
    assert torch.equal(restored.audio_encoder.net.conv1.weight, model.audio_encoder.net.conv1.weight)


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "c.pt", RJAModel(ModelConfig(use_backbones=False, clips=2)),
                    extra={"rng": capture_rng_state()})
    want = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["extra"]["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == want


def test_failed_save_keeps_the_old_file(tmp_path):
    model = RJAModel(ModelConfig(use_backbones=False, clips=2))
    path = tmp_path / "c.pt"
    save_checkpoint(path, model, extra={"epoch": 1})
    with pytest.raises(Exception, match="pickle|serializ|Can't"):
        save_checkpoint(path, model, extra={"bad": lambda: None})
    assert load_checkpoint(path)["extra"] == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_load_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an rja_models checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
