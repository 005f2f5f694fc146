"""Window predictions as per-frame series: the one aggregation that evaluate, validation, predict and
live mode share.

A window record (`rja_models.training.evaluation.predict_windows`) holds ``"pred"`` [R, T], one row
per frame it is scored on (``"frames"`` [R], else consecutive from ``"start_frame"``), and the model's
``"clip"`` [L, T], one value per clip that the rows repeat (``R = L * rows per clip``). Two layouts:

* `video_series`, the scoring layout (evaluate, validation): each frame gets its rows' prediction,
  the mean where overlapping windows give a frame several rows; the clip's value is every frame of
  its span's, as the authors score their windows. Validation windows do not overlap, so each frame
  has one row.
* `frame_predictions`, the curve (predict, live): a clip's value belongs to the centre time of the
  frames it is scored on (its span; with ``label_frame="last"`` its last frame), clips of
  overlapping windows with the same centre are averaged, frames between centres are linearly
  interpolated in time and frames before the first / after the last centre hold its value; then,
  optionally, a centred moving average over a span of seconds (`smooth_series`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Frame timestamps come from integer pts: a tolerance keeps a frame exactly at the edge of a
# smoothing span inside it despite float rounding.
_TIME_TOLERANCE_S = 1e-6


@dataclass
class VideoSeries:
    """Frame-level arrays of one video: `pred`, `labels` float32 [N, T], `mask` bool [N] (a label to
    score), `seen` bool [N] (a prediction exists), `face` bool [N] (the frame has its own face crop or
    detection; None: every frame has one)."""

    pred: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    seen: np.ndarray
    face: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.face is None:
            self.face = np.ones(len(self.mask), bool)


def row_frames(record: dict[str, Any]) -> np.ndarray:
    """The frame of each row of a window record: its "frames", else consecutive from "start_frame"."""
    if "frames" in record:
        return np.asarray(record["frames"], dtype=np.int64)
    return record["start_frame"] + np.arange(len(record["pred"]), dtype=np.int64)


def video_series(records: Sequence[dict[str, Any]]) -> dict[str, VideoSeries]:
    """The scoring layout per video (see the module docstring). A record's ``"scored"`` rows (else its
    ``"mask"``) are the frames to score, its ``"face"`` rows (else all) the frames with a face."""
    by_video: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_video.setdefault(r["video"], []).append(r)
    out = {}
    for video, rows in sorted(by_video.items()):
        length = max(int(row_frames(r).max()) + 1 for r in rows)
        targets = rows[0]["pred"].shape[-1]
        total, count = np.zeros((length, targets)), np.zeros(length, np.int64)
        s = VideoSeries(np.zeros((length, targets), np.float32), np.zeros((length, targets), np.float32),
                        np.zeros(length, bool), np.zeros(length, bool), np.zeros(length, bool))
        for r in rows:
            at = row_frames(r)
            keep = at >= 0  # the authors' first windows start before the video
            at = at[keep]
            np.add.at(total, at, r["pred"][keep])
            np.add.at(count, at, 1)
            s.labels[at], s.seen[at] = r["labels"][keep], True
            s.mask[at] |= np.asarray(r.get("scored", r["mask"]), bool)[keep]
            s.face[at] |= np.asarray(r["face"], bool)[keep] if "face" in r else True
        s.pred[:] = total / np.maximum(count, 1)[:, None]  # float64 sums: a repeated window averages to itself
        # Windows pad past the end of a video (mask False): trim after the last labelled frame, if any.
        labelled = np.flatnonzero(s.mask)
        end = int(labelled[-1]) + 1 if len(labelled) else length
        out[video] = VideoSeries(s.pred[:end], s.labels[:end], s.mask[:end], s.seen[:end], s.face[:end])
    return out


def clip_points(records: Sequence[dict[str, Any]], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(centres float64 [K], values float64 [K, T])``: one point per clip of one video of
    ``len(times)`` frames (``times``: each frame's time, ascending), at the mean time of its rows
    inside the video, ascending; clips with the same centre averaged; clips wholly outside the video
    (padding) left out."""
    n = len(times)
    centres, values = [], []
    for r in records:
        clip = np.asarray(r["clip"], dtype=np.float64)
        frames = row_frames(r).reshape(len(clip), -1)
        inside = (frames >= 0) & (frames < n)
        count = inside.sum(axis=1)
        at = np.where(inside, times[np.clip(frames, 0, n - 1)], 0.0).sum(axis=1) / np.maximum(count, 1)
        centres.append(at[count > 0])
        values.append(clip[count > 0])
    if not centres or not sum(len(c) for c in centres):
        raise ValueError("no clip of these windows lies inside the video")
    unique, inverse = np.unique(np.concatenate(centres), return_inverse=True)
    sums = np.zeros((len(unique), values[0].shape[-1]))
    np.add.at(sums, inverse, np.concatenate(values))
    return unique, sums / np.bincount(inverse)[:, None]


def interpolate_points(centres: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """float32 [N, T]: ``values`` linearly interpolated at ``times``, held before the first and after
    the last of ``centres`` (ascending)."""
    return np.stack([np.interp(times, centres, values[:, j]) for j in range(values.shape[1])],
                    axis=1).astype(np.float32)


def smooth_series(pred: np.ndarray, times: np.ndarray, seconds: float) -> np.ndarray:
    """float32 [N, T]: at each frame, the mean of ``pred`` over the frames within ``seconds / 2`` of its
    time (a centred moving average in time, narrower at the ends of the video); ``seconds`` 0: as is."""
    if seconds <= 0:
        return np.asarray(pred, dtype=np.float32)
    half = seconds / 2 + _TIME_TOLERANCE_S
    lo = np.searchsorted(times, times - half, side="left")
    hi = np.searchsorted(times, times + half, side="right")
    cumulative = np.concatenate([np.zeros((1, pred.shape[1])), np.cumsum(pred, axis=0, dtype=np.float64)])
    return ((cumulative[hi] - cumulative[lo]) / (hi - lo)[:, None]).astype(np.float32)


def frame_predictions(records: Sequence[dict[str, Any]], times: np.ndarray, smooth: float = 0.0) -> np.ndarray:
    """float32 [N, T]: the curve of one video of ``len(times)`` frames (see the module docstring):
    `clip_points`, `interpolate_points` at every frame, then `smooth_series` over ``smooth`` seconds."""
    times = np.asarray(times, dtype=np.float64)
    return smooth_series(interpolate_points(*clip_points(records, times), times), times, smooth)
