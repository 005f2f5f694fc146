"""`python -m rja_models.prepare`: the tree it writes is what `AffWild2Dataset` reads, reruns skip
what is done and redo what is not, and every bad input is one line with exit code 2."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_faces import BACKGROUND, cover, needs_dlib, paste, photo_patch

from rja_models import prepare
from rja_models.data import AffWild2Dataset, write_av_file
from rja_models.inference.faces import FacePipeline, decode_frames

N = 20
FPS = 15.0
COVERED = range(8, 12)


def small_video(path: Path, *, shift: int = 0, face: bool = True) -> Path:
    """A 320x240 clip with audio of the photo drifting right (a face of ~100 px), covered on COVERED."""
    patch = photo_patch()
    frames, known = [], []
    for i in range(N):
        frame = Image.new("RGB", (320, 240), BACKGROUND)
        box = paste(frame, patch, 60 + shift + 2 * i, 40, 0.45) if face else np.zeros(4)
        frames.append(np.asarray(frame))
        known.append(box)
    if face:
        frames = cover(frames, np.array(known), COVERED)
    audio = 0.2 * np.sin(2 * np.pi * 220 * np.arange(round(N / FPS * 16000)) / 16000)
    write_av_file(path, frames, fps=FPS, audio=audio.astype(np.float32))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sources")
    return {"a": small_video(base / "a.mp4"), "b": small_video(base / "b.mkv", shift=30),
            "blank": small_video(base / "blank.mp4", face=False), "base": base}


def run_prepare(*argv: object) -> Path:
    return prepare.main([str(a) for a in argv])


def crop_indices(folder: Path) -> set[int]:
    return {int(p.stem) for p in folder.glob("*.jpg")}


def read_faces_csv(folder: Path) -> np.ndarray:
    with (folder / "faces.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(len(rows)))
    return np.array([r["detected"] == "1" for r in rows])


@needs_dlib
def test_tree_is_what_the_loader_reads(sources, tmp_path):
    root = tmp_path / "tree"
    assert run_prepare(sources["a"], sources["b"], "--out", root, "--quiet") == root
    for name, source in (("a", sources["a"]), ("b", sources["b"])):
        folder = root / "cropped_aligned" / name
        detected = read_faces_csv(folder)
        assert len(detected) == N
        # A crop exactly on the frames where the face was found (1-based names), none under the cover.
        assert crop_indices(folder) == {i + 1 for i in np.flatnonzero(detected)}
        assert not detected[list(COVERED)].any() and detected[COVERED.stop :].all() and detected[:6].all()
        with Image.open(folder / "00001.jpg") as crop:
            assert crop.size == (112, 112)
        assert (root / "videos" / source.name).read_bytes() == source.read_bytes()
        assert json.loads((folder / prepare.MARKER).read_text())["crops"] == detected.sum()
        template = (root / "annotation_templates" / f"{name}.txt").read_text().splitlines()
        assert template == ["valence,arousal"] + ["-5,-5"] * N
    # Labelled by a user: the loader reads the tree, pairs crops and labels and finds the audio.
    labels = root / "VA_Estimation_Challenge" / "Train_Set"
    labels.mkdir(parents=True)
    values = np.linspace(-0.9, 0.9, N)
    for name in ("a", "b"):
        (labels / f"{name}.txt").write_text("valence,arousal\n" + "".join(f"{v:.3f},{-v:.3f}\n" for v in values))
    dataset = AffWild2Dataset(root, "train", clips=2, clip_frames=4, progress=False)
    assert [s.name for s in dataset.sequences] == ["a", "b"]
    detected = read_faces_csv(root / "cropped_aligned" / "a")
    assert (dataset.sequences[0].mask == detected).all()
    item = dataset[0]
    assert item["frames"].shape == (2, 3, 4, 112, 112)
    assert item["audio"].abs().max() > 0.05  # the tone, from videos/a.mp4
    # The crop the loader shows for frame 0 is the pipeline's aligned crop of that frame.
    frame = next(decode_frames(sources["a"]))
    pipeline = FacePipeline()
    expected = pipeline.align(frame, pipeline.landmarks(frame, pipeline.detect(frame)[0]))
    shown = (item["frames"][0, :, 0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(shown - expected).mean() < 8


@needs_dlib
def test_rerun_skips_done_videos_and_redoes_interrupted_ones(sources, tmp_path, capsys):
    root = tmp_path / "tree"
    run_prepare(sources["a"], sources["b"], "--out", root, "--quiet")
    a, b = root / "cropped_aligned" / "a", root / "cropped_aligned" / "b"
    stamps = {p: p.stat().st_mtime_ns for p in a.iterdir()}
    complete = crop_indices(b)
    # b interrupted: marker not written yet, crops partly written, one left from an older run.
    (b / prepare.MARKER).unlink()
    for p in sorted(b.glob("*.jpg"))[-5:]:
        p.unlink()
    Image.new("RGB", (112, 112)).save(b / "00999.jpg")
    template = root / "annotation_templates" / "a.txt"
    template.write_text("valence,arousal\n0.5,0.5\n")  # being filled in: never overwritten
    capsys.readouterr()
    run_prepare(sources["a"], sources["b"], "--out", root)
    out = capsys.readouterr().out
    assert "a: prepared before with these options, skipped" in out
    assert {p: p.stat().st_mtime_ns for p in a.iterdir()} == stamps
    assert crop_indices(b) == complete and (b / prepare.MARKER).exists()
    assert template.read_text() == "valence,arousal\n0.5,0.5\n"
    # Other options redo it; so does --overwrite.
    run_prepare(sources["a"], "--out", root, "--quiet", "--crop-size", "64")
    with Image.open(a / "00001.jpg") as crop:
        assert crop.size == (64, 64)
    stamps = {p: p.stat().st_mtime_ns for p in a.iterdir()}
    run_prepare(sources["a"], "--out", root, "--quiet", "--crop-size", "64", "--overwrite")
    assert all(p.stat().st_mtime_ns != t for p, t in stamps.items())


@needs_dlib
def test_a_video_without_a_face_fails_after_the_others(sources, tmp_path, capsys):
    root = tmp_path / "tree"
    line = fails_with_one_line([sources["blank"], sources["a"], "--out", root], capsys)
    assert "no face found in" in line and "blank.mp4" in line and "--detect-width" in line
    assert (root / "cropped_aligned" / "a" / prepare.MARKER).exists()
    assert not (root / "cropped_aligned" / "blank").exists()


def fails_with_one_line(argv: list[object], capsys: pytest.CaptureFixture) -> str:
    """`prepare.main(argv)` exits with code 2 and one error line (after argparse's usage line for
    argparse's own errors), no traceback; returns the error line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_prepare(*argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 2 and all(line.startswith("usage: ") for line in lines[:-1]), err
    assert lines[-1].startswith(f"{prepare.PROG}: error: ") and "Traceback" not in err, err
    return lines[-1]


@needs_dlib
def test_bad_inputs_are_one_line(sources, tmp_path, capsys):
    base = sources["base"]
    out = tmp_path / "tree"
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n")
    flv = tmp_path / "clip.flv"
    shutil.copy(sources["a"], flv)
    other_a = tmp_path / "a.mkv"
    shutil.copy(sources["a"], other_a)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [
        ([base / "missing.mp4", "--out", out], "missing.mp4: no such file"),
        ([notes, "--out", out], "notes.mp4: unreadable"),
        ([sources["a"], "--out", a_file], "a-file: is a file, not a folder"),
        ([sources["a"], "--out", out, "--box", "10,10,5,20"], "X0,Y0,X1,Y1"),
        ([sources["a"], "--out", out, "--crop-size", "8"], "--crop-size"),
        ([sources["a"], other_a, "--out", out], "two videos named 'a'"),
        ([flv, "--out", out], "clip.flv: the data loaders read videos ending in .mp4"),
    ]
    for argv, fragment in cases:
        assert fragment in fails_with_one_line(argv, capsys), argv
    assert not out.exists()  # nothing written before the inputs were checked


def test_missing_faces_extra_is_one_line(sources, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    line = fails_with_one_line([sources["a"], "--out", tmp_path / "tree"], capsys)
    assert 'pip install "rja[faces]"' in line


@needs_dlib
def test_prepare_train_predict_round_trip(sources, tmp_path):
    """Raw videos -> prepare -> a user's labels -> train (tiny, 1 epoch) -> predict on a raw video."""
    from rja_models import predict, train

    root = run_prepare(sources["a"], sources["b"], "--out", tmp_path / "tree", "--crop-size", "32", "--quiet")
    values = np.linspace(-0.9, 0.9, N)
    for split, name in (("Train_Set", "a"), ("Validation_Set", "b")):
        labels = root / "VA_Estimation_Challenge" / split
        labels.mkdir(parents=True)
        (labels / f"{name}.txt").write_text("valence,arousal\n" + "".join(f"{v:.3f},{-v:.3f}\n" for v in values))
    run = tmp_path / "run"
    train.main(["--data", "affwild2", "--data-root", str(root), "--image-size", "32", "--clips", "2",
                "--clip-frames", "4", "--lstm-hidden", "16", "--head-hidden", "16", "--pooling-hidden", "16",
                "--n-mels", "32", "--batch-size", "2", "--epochs", "1", "--out", str(run), "--quiet",
                "--no-tensorboard"])
    csv_path = predict.main([str(sources["b"]), "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "p"),
                             "--quiet"])
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(N))
    assert set(rows[0]) == {"frame", "timestamp", "valence", "arousal", "face"}
    faces = np.array([r["face"] == "1" for r in rows])
    assert not faces[list(COVERED)].any() and faces[COVERED.stop:].all()
    pred = np.array([[float(r["valence"]), float(r["arousal"])] for r in rows])
    assert np.isfinite(pred).all() and (np.abs(pred) <= 1).all()
