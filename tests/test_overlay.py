"""The overlay video: it decodes, keeps the input's frames, timing and audio (copied, or re-encoded
to AAC when the container cannot hold the codec), from several input containers; and the drawing."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image
from test_predict_frames import TINY, chirp

from rja_models import predict
from rja_models.checkpoint import save_checkpoint
from rja_models.config import ModelConfig
from rja_models.data import probe_video, write_av_file
from rja_models.inference.overlay import _DETECTED, _INTERPOLATED, OverlayPainter, write_overlay
from rja_models.model import RJAModel

FPS, FRAMES = 15, 30


def decoded(path) -> dict:
    """What decoding the whole file gives: frame count, first and last frame time, the audio's codec
    and decoded duration (seconds of samples)."""
    with av.open(str(path)) as container:
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    out = {"frames": len(times), "first": times[0], "last": times[-1], "audio": None, "audio_seconds": 0.0}
    with av.open(str(path)) as container:
        if container.streams.audio:
            stream = container.streams.audio[0]
            out["audio"] = stream.codec_context.name
            out["audio_seconds"] = sum(f.samples for f in container.decode(stream)) / stream.rate
    return out


def assert_same_timing(source, overlay) -> None:
    a, b = decoded(source), decoded(overlay)
    assert abs(a["frames"] - b["frames"]) <= 1
    assert b["last"] - b["first"] == pytest.approx(a["last"] - a["first"], abs=1 / FPS)  # within one frame
    assert b["audio"] is not None and b["audio_seconds"] == pytest.approx(a["audio_seconds"], abs=0.1)


def webm(path, n: int = FRAMES, sample_rate: int = 48000) -> None:
    """A VP8 + Opus WebM file (Opus does not go into the MP4 overlay as it is)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx", rate=FPS)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        sound = container.add_stream("libopus", rate=sample_rate, layout="stereo")
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 8 * i, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        samples = chirp(n / FPS, sample_rate)
        for start in range(0, len(samples), 960):
            chunk = av.AudioFrame.from_ndarray(np.stack([samples[start : start + 960]] * 2), format="fltp",
                                               layout="stereo")
            chunk.sample_rate, chunk.pts = sample_rate, start
            container.mux(sound.encode(chunk))
        container.mux(sound.encode())


def test_predict_overlay_of_an_mkv(tmp_path):
    video = tmp_path / "talk.mkv"
    frames = np.random.default_rng(0).integers(0, 255, (FRAMES, 64, 96, 3), dtype=np.uint8)
    write_av_file(video, frames, fps=FPS, audio=chirp(FRAMES / FPS))
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, RJAModel(ModelConfig(**TINY)))
    for out in ("overlay.mp4", "overlay.mkv"):
        predict.main([str(video), "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--quiet", "--whole-frame",
                      "--overlay", str(tmp_path / out)])
        assert_same_timing(video, tmp_path / out)
        assert decoded(tmp_path / out)["audio"] == "aac"  # copied


@pytest.mark.parametrize("out", ["overlay.mp4", "overlay.mov", "overlay.mkv"])
def test_overlay_of_a_webm(tmp_path, out):
    video = tmp_path / "clip.webm"
    webm(video)
    info = probe_video(video)
    pred = np.stack([np.sin(info.timestamps), np.cos(info.timestamps)], axis=1)
    write_overlay(video, tmp_path / out, info.timestamps, pred, ["valence", "arousal"])
    assert_same_timing(video, tmp_path / out)
    # MP4/MOV cannot hold Opus as it is: re-encoded to AAC; Matroska holds it.
    assert decoded(tmp_path / out)["audio"] == ("opus" if out.endswith(".mkv") else "aac")
    with av.open(str(tmp_path / out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")


def test_overlay_rejects_mismatched_input(tmp_path):
    video = tmp_path / "clip.webm"
    webm(video, n=5)
    with pytest.raises(ValueError, match="5 frames"):
        write_overlay(video, tmp_path / "o.mp4", np.arange(4) / FPS, np.zeros((4, 2)), ["valence", "arousal"])
    with pytest.raises(ValueError, match=r"\.mp4"):
        write_overlay(video, tmp_path / "o.webm", np.arange(5) / FPS, np.zeros((5, 2)), ["valence", "arousal"])


def test_box_style_gauges_and_trace():
    painter = OverlayPainter(320, 240, ["valence", "arousal"])
    gray = Image.new("RGB", (320, 240), (128, 128, 128))
    box = np.array([100.0, 40.0, 200.0, 140.0])
    trace_times = np.linspace(-2, 0, 20)
    trace = np.stack([np.linspace(-1, 1, 20), np.zeros(20)], axis=1)
    detected = np.asarray(painter.paint(gray, np.array([0.5, -0.5]), trace_times, trace, box, True))
    dashed = np.asarray(painter.paint(gray, np.array([0.5, -0.5]), trace_times, trace, box, False))
    top = slice(110, 190)  # along the box's top edge, row 40
    assert (detected[40, top] == _DETECTED).all(axis=1).all()  # a solid line
    on = (dashed[40, top] == _INTERPOLATED).all(axis=1)
    assert 0.3 < on.mean() < 0.7  # dashes
    assert (np.asarray(gray)[40, top] == 128).all()  # the input is not drawn on
    x0, y0, x1, y1 = painter.gauges
    assert (detected[y0:y1, x0:x1] != 128).any(axis=-1).mean() > 0.9  # the panel darkened behind the gauges
    no_box = np.asarray(painter.paint(gray, np.array([0.5, -0.5]), trace_times, trace, None))
    assert (no_box[40, top] == 128).all()
    # Another value moves the gauge: the drawings differ only in the gauge panel.
    other = np.asarray(painter.paint(gray, np.array([-0.5, -0.5]), trace_times, trace, None))
    changed = np.argwhere((other != no_box).any(axis=-1))
    assert len(changed) and (changed[:, 1] < x1).all() and (changed[:, 0] >= y0).all()
