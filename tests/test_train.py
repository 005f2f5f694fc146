"""The training loop on tiny precomputed features: resuming repeats an uninterrupted run bit for bit,
run-directory safety, schedules, config-file precedence."""

from __future__ import annotations

import argparse
import json
import math
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rja_models import train
from rja_models.checkpoint import load_checkpoint, model_from_checkpoint
from rja_models.data import DataError, save_features
from rja_models.training import logs, plots
from rja_models.training.logs import MetricsLog
from rja_models.training.loop import lr_factor

CLIP_FRAMES, DIM = 2, 8


def make_feature_data(root: Path, videos: int = 6, clips: int = 12, seed: int = 0) -> Path:
    """`root/{train,val}/<video>.pt` feature files whose labels are smooth functions of the features
    (valence from audio, arousal from visual), so that a few epochs learn something."""
    g = torch.Generator().manual_seed(seed)
    for i in range(videos):
        split = "val" if i >= videos - 2 else "train"
        xa = torch.randn(clips, DIM, generator=g).cumsum(0) / 3
        xv = torch.randn(clips, DIM, generator=g).cumsum(0) / 3
        labels = torch.stack([torch.tanh(xa[:, 0]), torch.tanh(xv[:, 1])], dim=-1).repeat_interleave(CLIP_FRAMES, 0)
        mask = torch.ones(clips * CLIP_FRAMES, dtype=torch.bool)
        mask[3] = False
        save_features(root / split, [{"video": f"v{i}", "xa": xa, "xv": xv, "labels": labels, "mask": mask}],
                      clip_frames=CLIP_FRAMES)
    return root


def feature_args(data: Path, out: Path, *extra: str) -> list[str]:
    """Tiny fusion-only training options (quiet, no TensorBoard)."""
    return ["--data", "features", "--data-root", str(data), "--out", str(out), "--clips", "4", "--batch-size", "4",
            "--lstm-hidden", "8", "--head-hidden", "8", "--attention-hidden", "4", "--train-stride", "4",
            "--quiet", "--no-tensorboard", "--lr", "3e-3", *extra]


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_feature_data(tmp_path_factory.mktemp("features"))


def state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_repeats_an_uninterrupted_run_bit_for_bit(features, tmp_path):
    # Dropout on, so the restored RNG state matters; the cosine schedule spans both epochs.
    options = ["--epochs", "2", "--dropout", "0.3"]
    full = train.main(feature_args(features, tmp_path / "full", *options))
    part = train.main(feature_args(features, tmp_path / "part", *options, "--stop-after", "1"))
    assert part == {"stopped": True, "epoch": 1}
    assert load_checkpoint(tmp_path / "part" / "last.pt")["extra"]["state"]["epoch"] == 1
    resumed = train.main(feature_args(features, tmp_path / "part", *options, "--resume"))
    a, b = state(tmp_path / "full" / "last.pt"), state(tmp_path / "part" / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["history"] == [{**h, "seconds": f["seconds"]} for h, f in zip(resumed["history"], full["history"])]
    assert full["val"] == resumed["val"]
    # The log holds each epoch once, also after the resume.
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_outputs_and_best_checkpoint(features, tmp_path):
    old_umask = os.umask(0o027)
    try:
        summary = train.main(feature_args(features, tmp_path, "--epochs", "2"))
    finally:
        os.umask(old_umask)
    for name in ("last.pt", "best.pt", "metrics.jsonl", "learning_curves.png", "val_predictions.png", "summary.json"):
        assert (tmp_path / name).is_file(), name
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["extra"]["state"]["best_epoch"] == summary["best_epoch"]
    assert summary["val"] == summary["history"][summary["best_epoch"] - 1]["val"]
    assert best["config"]["use_backbones"] is False and best["config"]["da"] == DIM
    # best.pt: what inference needs; last.pt: also what --resume needs. Both with the user's umask.
    last = load_checkpoint(tmp_path / "last.pt")
    assert not {"optimizer", "scheduler"} & set(best) and not {"rng", "scaler"} & set(best["extra"])
    assert {"optimizer", "scheduler"} <= set(last) and {"rng", "scaler"} <= set(last["extra"])
    assert model_from_checkpoint(tmp_path / "best.pt")[1].da == DIM
    for name in ("best.pt", "last.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_metrics_log_each_epoch(features, tmp_path):
    """The learning rate each epoch used (cosine over 2 epochs from 3e-3), training loss and CCC, validation loss."""
    train.main(feature_args(features, tmp_path, "--epochs", "2"))
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs[0]["lr"] == pytest.approx(3e-3) and epochs[0]["lr_last"] < 3e-3
    assert 0 < epochs[1]["lr_last"] < epochs[1]["lr"] < epochs[0]["lr"]  # the last epoch's rate is not 0
    for entry in epochs:
        assert set(entry["train"]) == set(entry["val"]) == {"valence", "arousal", "mean"}
        assert math.isfinite(entry["train_loss"]) and math.isfinite(entry["val_loss"])
        assert entry["val_loss"] == pytest.approx(1 - entry["val"]["mean"], abs=1e-4)  # --loss ccc over the split
        assert entry["val_frames"] > 0 and 0 <= entry["val_frames_without_face"] <= entry["val_frames"]


def test_plots(monkeypatch, tmp_path):
    """Integer epoch ticks even for one epoch; prediction plots with axis labels, a fixed range and CCC titles."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    ccc = {"valence": 0.5, "arousal": 0.25, "mean": 0.375}
    plots.plot_learning_curves([{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "train": ccc, "val": ccc}],
                               ["valence", "arousal"], tmp_path / "c.png")
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0]
    series = {"x": np.arange(4), "pred": np.zeros((4, 2)), "labels": np.zeros((4, 2)), "mask": np.ones(4, bool),
              "ccc": ccc}
    plots.plot_series({"v": series}, ["valence", "arousal"], tmp_path / "p.png", xlabel="time (s)")
    ax = figures[1].axes[0]
    assert ax.get_ylim() == (-1.0, 1.0) and ax.get_xlabel() == "time (s)" and ax.get_ylabel() == "valence"
    assert ax.get_title() == "v: valence (CCC 0.500)"


def test_missing_tensorboard_is_said_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import fails, as when not installed
    logs._note_no_tensorboard.cache_clear()
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        assert MetricsLog(tmp_path / run, [], tensorboard=True).writer is None
    err = capsys.readouterr().err
    assert err.count("TensorBoard is not installed") == 1 and "pip install tensorboard" in err


def test_existing_run_needs_resume_or_overwrite(features, tmp_path):
    train.main(feature_args(features, tmp_path, "--epochs", "1"))
    with pytest.raises(SystemExit, match="--resume"):
        train.main(feature_args(features, tmp_path, "--epochs", "1"))
    with pytest.raises(SystemExit, match="different options.*lr"):
        train.main(feature_args(features, tmp_path, "--epochs", "2", "--resume", "--lr", "1e-2"))
    train.main(feature_args(features, tmp_path, "--epochs", "1", "--overwrite"))


def test_empty_split_is_a_clear_error(features, tmp_path):
    # v0 is a training video only: the validation split selects nothing.
    with pytest.raises((SystemExit, DataError), match=r"val.*(has no sub-sequence|holds no feature file)"):
        train.main(feature_args(features, tmp_path, "--epochs", "1", "--videos", "v0"))


def test_mse_loss_and_sgd_step_schedule(features, tmp_path):
    summary = train.main(feature_args(features, tmp_path, "--epochs", "2", "--loss", "mse", "--optimizer", "sgd",
                                      "--schedule", "step", "--step-epochs", "1", "--step-gamma", "0.5"))
    assert math.isfinite(summary["history"][-1]["train_loss"])


def test_lr_schedules():
    args = argparse.Namespace(epochs=4, warmup_epochs=1.0, schedule="cosine", step_epochs=1.0, step_gamma=0.1)
    assert lr_factor(args, 0, 10) == pytest.approx(0.1)
    assert lr_factor(args, 10, 10) == pytest.approx(1.0)
    assert lr_factor(args, 25, 10) == pytest.approx(0.5)
    assert lr_factor(args, 40, 10) == pytest.approx(0.0)
    args.schedule, args.warmup_epochs = "step", 0.0
    assert lr_factor(args, 25, 10) == pytest.approx(0.01)
    args.schedule = "none"
    assert lr_factor(args, 25, 10) == 1.0


def test_config_file_under_command_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 3\nimage-size: 40\nfusion: concat\nlr: 0.01\ntarget_names: [valence, arousal]\n")
    train.main(["--config", str(config), "--epochs", "5", "--print-config"])
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["options"]["epochs"] == 5  # command line over file
    assert resolved["options"]["lr"] == 0.01  # file over default
    assert resolved["model"]["image_size"] == 40 and resolved["model"]["fusion"] == "concat"
    # An ablation is a base that explicit model options override; the embedded preset is under both.
    train.main(["--ablation", "blstms_t3", "--iterations", "4", "--no-joint-blstm", "--print-config"])
    model = json.loads(capsys.readouterr().out)["model"]
    assert (model["iterations"], model["joint_blstm"], model["image_size"]) == (4, False, train.PRESET["image_size"])
    (tmp_path / "c.json").write_text(json.dumps({"no_such_option": 1}))
    with pytest.raises(SystemExit):
        train.main(["--config", str(tmp_path / "c.json"), "--print-config"])


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_parse(config, capsys):
    from rja_models import ablate

    (ablate if config.stem == "ablation" else train).main(["--config", str(config), "--print-config"])
    assert json.loads(capsys.readouterr().out)


def test_default_config_file_is_the_embedded_default(capsys):
    train.main(["--print-config"])
    embedded = json.loads(capsys.readouterr().out)
    train.main(["--config", str(Path(__file__).parents[1] / "configs" / "default.yaml"), "--print-config"])
    from_file = json.loads(capsys.readouterr().out)
    from_file["options"]["config"] = None
    # The file sets the preset's model values explicitly; the resolved model config is the same.
    assert from_file["model"] == embedded["model"]
    assert {k: v for k, v in from_file["options"].items() if k not in ("image_size", "clips", "clip_frames")} == {
        k: v for k, v in embedded["options"].items() if k not in ("image_size", "clips", "clip_frames")}
