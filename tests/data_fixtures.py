"""Helpers for the data tests: small videos with known content and a small synthetic tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rja_models.data import generate_synthetic_dataset, write_av_file

SR = 16000
SIZE = 64
BURST = 400  # samples of a 1 kHz tone burst


def index_frames(n: int, size: int = SIZE) -> np.ndarray:
    """uint8 [n, size, size, 3]: frame i is a flat gray of level 5 * i (decodes back within a few levels)."""
    return np.repeat((5 * np.arange(n, dtype=np.uint8))[:, None, None, None], size * size * 3, 1).reshape(
        n, size, size, 3
    )


def burst_audio(seconds: float, burst_times: list[float], sr: int = SR) -> np.ndarray:
    """Silence with a loud 1 kHz tone burst starting at each of ``burst_times`` (seconds)."""
    audio = np.zeros(round(seconds * sr), dtype=np.float32)
    tone = 0.8 * np.cos(2 * np.pi * 1000 * np.arange(BURST) / sr)
    for t in burst_times:
        k = round(t * sr)
        audio[k : k + BURST] = tone
    return audio


def onsets(audio: np.ndarray, threshold: float = 0.3) -> list[int]:
    """Sample indices where the signal first exceeds ``threshold`` after a quiet stretch."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return [int(i) for j, i in enumerate(loud) if j == 0 or i - loud[j - 1] > BURST]


def write_test_video(
    path: Path,
    *,
    n: int,
    fps: float,
    burst_frames: list[float],
    frame_pts: list[int] | None = None,
    audio: bool = True,
    codec: str = "libx264",
) -> Path:
    """A video of ``n`` index frames; audio bursts at the times of the given frame positions (in 1/fps)."""
    seconds = (n if frame_pts is None else frame_pts[-1] + 1) / fps
    sound = burst_audio(seconds, [f / fps for f in burst_frames]) if audio else None
    write_av_file(path, index_frames(n), fps=fps, audio=sound, sample_rate=SR, frame_pts=frame_pts, codec=codec)
    return path


def small_tree(root: Path, seed: int = 0) -> Path:
    """3 video files (one a _left/_right pair), 2.4 s at 15 fps, 64x64 crops; 1 in the val split."""
    return generate_synthetic_dataset(
        root, num_videos=3, seconds=2.4, fps=15.0, val_fraction=0.34, seed=seed, image_size=SIZE, progress=False
    )
