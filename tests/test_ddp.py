"""torchrun with 2 gloo processes, on tiny features and on the full model with its backbones: both
ranks end with identical weights and buffers, and the result matches one process with the same
global batch (the loss is computed over the gathered global batch, so this holds for the CCC loss
too, which does not decompose per rank, and BatchNorm's statistics are over the global batch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_workers import global_batchnorm_worker
from test_train import feature_args, make_feature_data
from torch.utils.data import default_collate

from rja_models import train
from rja_models.backbones import AudioEncoder
from rja_models.checkpoint import load_checkpoint
from rja_models.config import ModelConfig
from rja_models.data import AffWild2Dataset, generate_synthetic_dataset
from rja_models.data.video import to_clips
from rja_models.model import RJAModel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(tmp_path: Path, args: list[str]) -> tuple[dict, str]:
    """`torchrun --nproc_per_node=2 -m rja_models.train ARGS` on gloo: (summary.json, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-P", "-m", "torch.distributed.run", "--nproc_per_node=2", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "rja_models.train", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = Path(args[args.index("--out") + 1])
    summary = json.loads((out / "summary.json").read_text())
    digests = summary["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks hold identical weights and buffers
    assert not any(p.name.startswith("rank") for p in out.iterdir())  # only rank 0 wrote
    return summary, done.stderr


def assert_same_training(ddp: Path, one: Path, summary: dict, single: dict, tol: float = 1e-4) -> None:
    """The 2-process run's last weights and buffers (state dict), losses and validation CCCs are the single run's."""
    a, b = (load_checkpoint(run / "last.pt")["model"] for run in (ddp, one))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol / 10, msg=key)
    assert len(summary["history"]) == len(single["history"])
    for h_ddp, h_one in zip(summary["history"], single["history"]):
        assert h_ddp["train_loss"] == pytest.approx(h_one["train_loss"], rel=tol, abs=tol / 10)
        for k in ("valence", "arousal", "mean"):
            # Validation CCC is over the whole split, gathered from both ranks.
            assert h_ddp["val"][k] == pytest.approx(h_one["val"][k], rel=tol, abs=tol / 10)


@pytest.mark.parametrize("loss", ["ccc", "mse"])
def test_two_processes_match_one(tmp_path: Path, loss: str) -> None:
    data = make_feature_data(tmp_path / "data", videos=6, clips=12)
    # No dropout: its masks are drawn per rank, which one process cannot reproduce.
    # SGD: unlike Adam, it is not invariant to a wrong gradient scale.
    options = ["--epochs", "2", "--dropout", "0", "--loss", loss, "--optimizer", "sgd", "--lr", "0.05"]
    summary, _ = run_two_processes(tmp_path, feature_args(data, tmp_path / "ddp", *options))

    single = train.main(feature_args(data, tmp_path / "one", *options))
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("ddp", "one"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    for h_ddp, h_one in zip(summary["history"], single["history"]):
        assert h_ddp["train_loss"] == pytest.approx(h_one["train_loss"], rel=1e-4, abs=1e-5)
        for k in ("valence", "arousal", "mean"):
            # Validation CCC is over the whole split, gathered from both ranks.
            assert h_ddp["val"][k] == pytest.approx(h_one["val"][k], rel=1e-4, abs=1e-5)


def test_two_processes_match_one_with_backbones(tmp_path: Path) -> None:
    """The full model (ResNet-18 and R3D-18 with BatchNorm, U-BLSTMs, fusion, J-BLSTM) at tiny sizes.

    Two epochs of one global batch each. The tolerance is 10x the features test's: the two runs
    round differently (batch statistics summed in another order), and in a network this small a
    ReLU input within rounding of zero switches a gradient path on or off, which moves the next
    step's weights by about 1e-4 relative. Per-process BatchNorm differs by 100-1000 times more.
    """
    data = generate_synthetic_dataset(tmp_path / "data", num_videos=3, seconds=1.2, val_fraction=0.34,
                                      image_size=32, progress=False)
    # 4 training sub-sequences (2 of each face of synth_000), one global batch: DistributedSampler pads nothing.
    videos = "synth_000_left,synth_000_right,synth_002"
    size = ["--clips", "2", "--clip-frames", "2", "--image-size", "32", "--train-stride", "14", "--batch-size", "4"]
    train_set = AffWild2Dataset(data, "train", clip_frames=2, clips=2, stride=14, image_size=32,
                                videos=videos.split(",")[:2], progress=False)
    assert len(train_set) == 4
    options = ["--data", "affwild2", "--data-root", str(data), "--videos", videos, *size, "--lstm-hidden", "8",
               "--head-hidden", "8", "--pooling-hidden", "8", "--epochs", "2", "--dropout", "0",
               "--optimizer", "sgd", "--lr", "0.01", "--quiet", "--no-tensorboard"]
    summary, stderr = run_two_processes(tmp_path, [*options, "--out", str(tmp_path / "ddp")])
    assert "different weights" not in stderr
    assert "Grad strides do not match" not in stderr  # gradients arrive in the parameters' layout
    single = train.main([*options, "--out", str(tmp_path / "one")])
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    assert state["visual_encoder.net.stem.1.num_batches_tracked"].item() == 2  # one per global batch
    assert_same_training(tmp_path / "ddp", tmp_path / "one", summary, single, tol=1e-3)


def test_global_batchnorm_is_batchnorm_over_the_whole_batch() -> None:
    # The worker lives in a small module: a spawned process imports it, and this one imports a lot.
    torch.multiprocessing.spawn(global_batchnorm_worker, args=(2, free_port()), nprocs=2)


def test_parameter_gradients_keep_the_parameter_layout() -> None:
    """Clips from `to_clips` are channels-last in memory; the gradients must still be contiguous like
    the parameters, or AccumulateGrad and DDP's bucket views copy them every step."""
    torch.manual_seed(0)
    model = RJAModel(ModelConfig(clips=2, clip_frames=2, image_size=16, lstm_hidden=8, head_hidden=8,
                                 pooling_hidden=8))
    layouts = {}
    for name, p in model.named_parameters():
        p.register_hook(lambda g, name=name, p=p: layouts.__setitem__(name, (g.stride(), p.stride())))
    rng = np.random.default_rng(0)
    frames = default_collate([to_clips(rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), 2, 2)
                              for _ in range(2)])
    assert not frames.is_contiguous()
    model(frames, torch.randn(2, 2, 2133))["frame"].sum().backward()
    assert len(layouts) == len(list(model.parameters()))
    assert [name for name, (grad, param) in layouts.items() if grad != param] == []


def test_audio_features_of_a_clip_do_not_depend_on_its_batch() -> None:
    """The dB floor (max - 80 dB) is per clip: a loud clip in the batch must not change a quiet one's
    features, or a process's shard would see other features than the whole batch does."""
    torch.manual_seed(0)
    encoder = AudioEncoder(16000, n_mels=16, n_fft=256, hop_length=160).eval()
    quiet = 1e-4 * torch.randn(1, 3200)
    quiet[:, 1000:1200] = 0.0  # a silent stretch: below the loud clip's floor, above its own
    loud = torch.randn(1, 3200)
    with torch.no_grad():
        alone, together = encoder(quiet), encoder(torch.cat([quiet, loud]))[:1]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
