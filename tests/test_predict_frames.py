"""Per-frame predictions: the window aggregation against hand-computed values, and `predict` end to
end on a generated audio-visual video (whole frame, and the face pipeline on a real photograph
pasted into the frames), its options and its bad inputs."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from test_cli_errors import fails_with_one_line

from rja_models import predict
from rja_models.checkpoint import save_checkpoint
from rja_models.config import ModelConfig
from rja_models.data import probe_video, write_av_file
from rja_models.inference.windows import frame_predictions, smooth_series, video_series
from rja_models.model import RJAModel

needs_dlib = pytest.mark.skipif(importlib.util.find_spec("dlib") is None or
                                importlib.util.find_spec("face_recognition_models") is None,
                                reason='the face pipeline needs dlib: pip install ".[faces]"')

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
FPS, FRAMES, BLANK = 10, 40, 6  # 4 s; the first BLANK frames show no face
TINY = {"clips": 2, "clip_frames": 4, "image_size": 32, "lstm_hidden": 16, "head_hidden": 16, "pooling_hidden": 16,
        "n_mels": 32}


def record(start: int, clip: list[list[float]], span: int, frames: list[int] | None = None) -> dict:
    """A window record as `predict_windows` makes it: the clip values repeated over each clip's rows."""
    clip_values = np.array(clip, np.float32)
    out = {"video": "v", "start_frame": start, "clip": clip_values, "pred": np.repeat(clip_values, span, axis=0),
           "labels": np.zeros((len(clip) * span, 2), np.float32), "mask": np.ones(len(clip) * span, bool)}
    if frames is not None:
        out["frames"] = np.array(frames)
    return out


# Two windows of 2 clips of 4 frames, 4 frames apart, over 12 frames at 10 fps: clip centres at 0.15 s
# (frames 0-3), 0.55 s (frames 4-7, in both windows) and 0.95 s (frames 8-11).
WINDOWS = [record(0, [[0.2, -0.4], [0.6, 0.0]], 4), record(4, [[0.4, 0.2], [-0.2, 0.8]], 4)]
TIMES = np.arange(12) / 10


def test_overlapping_windows_average_then_interpolate_between_clip_centres():
    # Centre values: (0.2, -0.4); the mean of (0.6, 0.0) and (0.4, 0.2) = (0.5, 0.1); (-0.2, 0.8). Frames
    # 0, 1 are before the first centre (held), 10, 11 after the last; the rest linear in time.
    expected = [[0.2, -0.4], [0.2, -0.4], [0.2375, -0.3375], [0.3125, -0.2125], [0.3875, -0.0875],
                [0.4625, 0.0375], [0.4125, 0.1875], [0.2375, 0.3625], [0.0625, 0.5375], [-0.1125, 0.7125],
                [-0.2, 0.8], [-0.2, 0.8]]
    np.testing.assert_allclose(frame_predictions(WINDOWS, TIMES), expected, atol=1e-6)
    # The centre is a time: frames from 1 on shown 0.1 s late (a dropped frame) move the first centre to
    # mean(0, 0.2, 0.3, 0.4) = 0.225 s, the second to 0.65 s; frame 2 is then at 0.3 s.
    late = TIMES.copy()
    late[1:] += 0.1
    assert frame_predictions(WINDOWS, late)[2, 0] == pytest.approx(0.2 + 0.3 * (0.3 - 0.225) / (0.65 - 0.225))


def test_clip_centres_of_last_frame_rows_and_padding():
    # label_frame="last": one row per clip at its span's last frame (3 and 7): that is its centre.
    last = [record(0, [[0.0, 1.0], [0.4, -1.0]], 1, frames=[3, 7])]
    np.testing.assert_allclose(frame_predictions(last, TIMES[:10])[[0, 3, 5, 7, 9]],
                               [[0, 1], [0, 1], [0.2, 0], [0.4, -1], [0.4, -1]], atol=1e-6)
    # A last window padding past a 10-frame video: its second clip (frames 12-15) is left out, its
    # first one's centre is that of its frames inside the video (8, 9: 0.85 s).
    padded = [record(0, [[0.0, 0.0], [0.4, 0.4]], 4), record(8, [[0.8, 0.8], [-1.0, -1.0]], 4)]
    out = frame_predictions(padded, TIMES[:10])
    assert out[9, 0] == pytest.approx(0.8) and out[8, 0] == pytest.approx(0.4 + 0.4 * (0.8 - 0.55) / 0.3)


def test_smoothing_is_a_centred_moving_average_in_time():
    pred = np.array([[0.0], [3.0], [6.0], [0.0], [3.0]], np.float32)
    times = np.arange(5) / 10
    # 0.2 s: the frames within 0.1 s, i.e. the frame and its two neighbours (one at the ends).
    np.testing.assert_allclose(smooth_series(pred, times, 0.2)[:, 0], [1.5, 3.0, 3.0, 3.0, 1.5], atol=1e-6)
    np.testing.assert_allclose(smooth_series(pred, times, 0.4)[:, 0], [3.0, 2.25, 2.4, 3.0, 3.0], atol=1e-6)
    assert np.array_equal(smooth_series(pred, times, 0.0), pred)


def test_scoring_layout_averages_overlapping_rows_and_keeps_each_clip_value():
    scored = dict(WINDOWS[1], scored=np.ones(8, bool), mask=np.zeros(8, bool), face=np.arange(8) % 2 == 0)
    (series,) = video_series([WINDOWS[0], scored]).values()
    np.testing.assert_allclose(series.pred[:, 0], [0.2] * 4 + [0.5] * 4 + [-0.2] * 4, atol=1e-6)
    assert series.mask.all()  # "scored" rows count, whatever the training mask
    assert series.face.tolist() == [True] * 8 + [True, False, True, False]  # the first window has no "face": all


# --- predict end to end ---------------------------------------------------------------------------

def photo_frames() -> list[np.ndarray]:
    """320x240 frames: BLANK of background, then the photo's head and shoulders (a face of ~95 px) moving."""
    with Image.open(PHOTO) as photo:
        patch = photo.convert("RGB").crop((96, 72, 440, 420)).resize((150, 152), Image.BILINEAR)
    frames = []
    for i in range(FRAMES):
        frame = Image.new("RGB", (320, 240), (70, 90, 80))
        if i >= BLANK:
            frame.paste(patch, (20 + 3 * i, 30 + i))
        frames.append(np.asarray(frame))
    return frames


def chirp(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * (200 * t + 60 * t**2))).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained tiny model with both backbones, and a 4 s 10 fps A/V video of the photo."""
    base = tmp_path_factory.mktemp("predict-frames")
    checkpoint = base / "tiny.pt"
    save_checkpoint(checkpoint, RJAModel(ModelConfig(**TINY)))
    video = base / "photo.mp4"
    write_av_file(video, photo_frames(), fps=FPS, audio=chirp(FRAMES / FPS))
    return {"base": base, "checkpoint": checkpoint, "video": video}


def run_predict(files: dict[str, Path], out: Path, *options: str) -> list[dict[str, str]]:
    path = predict.main([str(files["video"]), "--checkpoint", str(files["checkpoint"]), "--out", str(out),
                         "--quiet", *options])
    return list(csv.DictReader(path.open()))


def values(rows: list[dict[str, str]], name: str = "valence") -> np.ndarray:
    return np.array([float(r[name]) for r in rows])


def test_predict_whole_frame_gives_a_curve_not_a_staircase(files, tmp_path):
    rows = run_predict(files, tmp_path, "--whole-frame")
    assert len(rows) == FRAMES and list(rows[0]) == ["frame", "timestamp", "valence", "arousal", "face"]
    assert {r["face"] for r in rows} == {""}  # no face detection ran
    assert (tmp_path / "photo.png").is_file()
    # Clips of 4 frames, windows every 4 frames: centres at frames 1.5, 5.5, ..., 37.5. Between the
    # first and the last, every frame differs from the next (a staircase repeats a clip's value 4 times).
    for name in ("valence", "arousal"):
        steps = np.diff(values(rows, name))[2:-2]
        assert np.count_nonzero(steps) == len(steps), steps
        assert values(rows, name)[0] == values(rows, name)[1]  # held before the first centre
    # --smooth 0.3: each frame the mean of the unsmoothed frames within 0.15 s (10 fps: itself and one
    # neighbour each side; one at the ends), to the CSV's 6 decimals.
    raw = values(rows)
    expected = [raw[max(i - 1, 0): i + 2].mean() for i in range(FRAMES)]
    np.testing.assert_allclose(values(run_predict(files, tmp_path / "s", "--whole-frame", "--smooth", "0.3")),
                               expected, atol=2e-6)


@needs_dlib
def test_predict_on_the_face(files, tmp_path):
    rows = run_predict(files, tmp_path, "--overlay", str(tmp_path / "overlay.mp4"))
    assert len(rows) == FRAMES
    face = np.array([int(r["face"]) for r in rows])
    assert not face[:BLANK].any() and face[BLANK:].mean() > 0.9  # no face on the blank frames
    whole = run_predict(files, tmp_path / "whole", "--whole-frame")
    assert not np.allclose(values(rows), values(whole), atol=1e-6)  # the model saw other images
    info = probe_video(tmp_path / "overlay.mp4")
    assert info.num_frames == FRAMES and info.has_audio and (info.width, info.height) == (320, 240)
    # --box on the photo's side of the frame finds the same face; the other side has none.
    assert len(run_predict(files, tmp_path / "box", "--box", "0,0,320,240")) == FRAMES
    with pytest.raises(SystemExit, match="no face found"):
        run_predict(files, tmp_path / "nobox", "--face-index", "1")


@pytest.mark.parametrize(("options", "fragment"), [
    (("--stride", "0"), "--stride"),
    (("--whole-frame", "--stride", "9"), "--stride 9: at most the window of 8 frames"),
    (("--smooth", "-1"), "--smooth"),
    (("--smooth", "nan"), "--smooth"),
    (("--overlay", "out.avi"), "--overlay"),
    (("--overlay", "{text}/out.mp4"), "--overlay"),
    (("--overlay", "{video}"), "--overlay"),
    (("--box", "1,2,3"), "--box"),
    (("--box", "10,10,5,20"), "--box"),
    (("--box", "0,0,400,100"), "--box 0,0,400,100: outside the 320x240 frame"),
    (("--face-index", "-1"), "--face-index"),
    (("--whole-frame", "--face-index", "1"), "--face-index"),
    (("--whole-frame", "--box", "0,0,10,10"), "--box"),
], ids=str)
def test_predict_bad_options(files, tmp_path, capsys, options, fragment):
    text = files["base"] / "notes.txt"
    text.write_text("a file\n")
    paths = {"text": str(text), "video": str(files["video"])}
    argv = [str(files["video"]), "--checkpoint", str(files["checkpoint"]), "--out", str(tmp_path), "--quiet",
            *(o.format(**paths) for o in options)]
    assert fragment.format(**paths) in fails_with_one_line(predict, argv, capsys)


def test_predict_stride_with_the_tiled_layout(files, tmp_path, capsys):
    checkpoint = tmp_path / "tiled.pt"
    save_checkpoint(checkpoint, RJAModel(ModelConfig(**TINY, window_layout="tiled", label_frame="last")))
    argv = [str(files["video"]), "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--quiet",
            "--whole-frame", "--stride", "2"]
    assert "tiled window layout" in fails_with_one_line(predict, argv, capsys)
    rows = list(csv.DictReader(predict.main(argv[:-2]).open()))  # its own windows: one clip ending at every frame
    assert len(rows) == FRAMES and np.count_nonzero(np.diff(values(rows))) > FRAMES // 2
