"""The command-line tools end to end on a tiny generated data set (full model with both backbones,
32x32 crops, 2 clips of 4 frames): train, evaluate, predict (also a video without audio), ablate."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rja_models import ablate, evaluate, predict, train
from rja_models.data import probe_video, write_av_file

TINY_DATA = ["--synthetic-videos", "3", "--synthetic-seconds", "2", "--image-size", "32"]
TINY_MODEL = ["--clips", "2", "--clip-frames", "4", "--lstm-hidden", "16", "--head-hidden", "16",
              "--pooling-hidden", "16", "--n-mels", "32", "--batch-size", "2", "--quiet", "--no-tensorboard"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One epoch of the full model on a 3-video synthetic set."""
    base = tmp_path_factory.mktemp("cli")
    data, out = base / "synthetic", base / "run"
    summary = train.main(["--data-root", str(data), *TINY_DATA, *TINY_MODEL, "--epochs", "1", "--out", str(out)])
    return {"base": base, "data": data, "out": out, "summary": summary}


def test_help_of_every_command():
    done = subprocess.run([sys.executable, "-P", "-m", "rja_models.train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--resume" in done.stdout and "--ablation" in done.stdout
    help_text = " ".join(done.stdout.split())
    assert "clips * clip_frames, one sub-sequence: windows do not overlap" in help_text  # --train-stride's true default
    for module in (evaluate, predict, ablate):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0


def test_train_writes_its_outputs(trained):
    out = trained["out"]
    for name in ("last.pt", "best.pt", "metrics.jsonl", "learning_curves.png", "val_predictions.png", "summary.json"):
        assert (out / name).is_file(), name
    entry = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert set(entry["val"]) == {"valence", "arousal", "mean"} and entry["epoch"] == 1
    # best.pt is for inference: the weights (both backbones: ~200 MB whatever the crop size), not the
    # optimizer's two moments per weight that only last.pt needs for --resume.
    best, last = (torch.load(out / name, weights_only=True, mmap=True) for name in ("best.pt", "last.pt"))
    assert "optimizer" not in best and "optimizer" in last
    assert (out / "best.pt").stat().st_size < 0.4 * (out / "last.pt").stat().st_size
    assert trained["summary"]["val_videos"]  # per-video CCC of the validation split


def test_evaluate_per_split_and_video(trained, tmp_path, capsys):
    results = evaluate.main(["--checkpoint", str(trained["out"] / "best.pt"), "--json", str(tmp_path / "r.json"),
                             "--csv", str(tmp_path / "r.csv")])
    assert set(results) == {"train", "val"}
    assert set(results["train"]["videos"]) == {"synth_000_left", "synth_000_right", "synth_001"}
    # The data options came from the checkpoint; the validation CCC is the one training reported
    # (up to float rounding: another batch size here).
    assert results["val"]["overall"] == pytest.approx(trained["summary"]["val"], rel=1e-3, abs=1e-4)
    assert "ALL (val" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["val"]["overall"]["mean"] == pytest.approx(
        results["val"]["overall"]["mean"])
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert {r["video"] for r in rows} == {"synth_000_left", "synth_000_right", "synth_001", "synth_002", "ALL"}


def test_predict_writes_csv_and_plot(trained, tmp_path):
    video = trained["data"] / "videos" / "synth_002.mp4"
    path = predict.main([str(video), "--checkpoint", str(trained["out"] / "best.pt"), "--out", str(tmp_path),
                         "--quiet", "--whole-frame"])
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == probe_video(video).num_frames  # every frame once, padding cut
    assert list(rows[0]) == ["frame", "timestamp", "valence", "arousal", "face"]
    assert float(rows[1]["timestamp"]) == pytest.approx(1 / 15, abs=1e-3)
    assert all(-1 <= float(r["valence"]) <= 1 for r in rows)
    assert (tmp_path / "synth_002.png").is_file()


def test_predict_video_without_audio(trained, tmp_path):
    silent = tmp_path / "silent.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    write_av_file(silent, frames, fps=25.0, audio=None)
    checkpoint = str(trained["out"] / "best.pt")
    with pytest.raises(SystemExit, match="no audio stream.*--visual-only"):
        predict.main([str(silent), "--checkpoint", checkpoint, "--out", str(tmp_path), "--quiet", "--whole-frame"])
    with pytest.warns(UserWarning, match="silence"):
        path = predict.main([str(silent), "--checkpoint", checkpoint, "--out", str(tmp_path), "--visual-only",
                             "--quiet", "--whole-frame"])
    assert len(list(csv.DictReader(path.open()))) == 20


def test_ablate_writes_markdown_table(trained, tmp_path):
    results = ablate.main(["--data-root", str(trained["data"]), *TINY_DATA, *TINY_MODEL, "--epochs", "1",
                           "--variants", "blstms_t2,audio_only", "--out", str(tmp_path)])
    assert list(results) == ["blstms_t2", "audio_only"]
    table = (tmp_path / "ablation.md").read_text()
    assert "| blstms_t2 | rja | yes | yes | 2 |" in table and "| audio_only | audio |" in table
    # A second run reuses the extracted features.
    stamp = (tmp_path / "features" / "features.json").stat().st_mtime_ns
    ablate.main(["--data-root", str(trained["data"]), *TINY_DATA, *TINY_MODEL, "--epochs", "1",
                 "--variants", "concat", "--out", str(tmp_path)])
    assert (tmp_path / "features" / "features.json").stat().st_mtime_ns == stamp
