"""Where sub-sequence windows sit in a video, which frames each clip shows, and which frames its
prediction is scored on.

A window holds ``L`` clips; a clip spans ``S = F * d`` consecutive frames and shows ``F`` of them,
every ``d``-th, ending on the span's last frame (``d`` = dilation). Two layouts:

* ``"strided"``: windows start at frame 0 and every ``stride`` frames (default: back to back), the
  last one reaching the end of the video; a clip always shows the fixed grid of its span.
* ``"tiled"``: the authors' reader (``datasets/dataset_new.py``, ``dataset_val.py``). Windows end
  ``S`` times one frame apart, then jump by ``W - S + 1`` frames (``W = L * S``): clip ``l`` of the
  window ending at frame ``e`` ends at ``e - (L - 1 - l) * S``, so every frame of the video is the
  last frame of exactly one clip. The first window starts ``S - 1`` frames before the video, its
  first clip holding frame 0 only. A clip shows the frames of its span that are *available*
  (in the video; for training also labelled) with the authors' rule: ``n >= F`` of them: every
  ``min(n // F, d)``-th from the last, the last ``F`` of those; ``0 < n < F``: those ``n``, the last
  repeated; none: a blank clip. Training keeps the windows that end inside the video, evaluation
  every window with a clip ending inside it.

Labels: ``label_frame="all"`` scores a clip's prediction on every frame of its span (``L * S`` rows
per window); ``"last"`` on its last frame only (``L`` rows), the authors' clip label (for training,
the label of the clip's last shown frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_LAYOUTS = ("strided", "tiled")
LABEL_FRAMES = ("all", "last")


def subsequence_starts(num_frames: int, length: int, stride: int) -> list[int]:
    """Start frames of windows of ``length`` every ``stride`` frames, the last one reaching the end."""
    starts = list(range(0, max(num_frames - length, 0) + 1, stride))
    if starts[-1] + length < num_frames:
        starts.append(starts[-1] + stride)
    return starts


def authors_clip_frames(available: np.ndarray, clip_frames: int, dilation: int) -> np.ndarray:
    """The frames a clip shows given the ``available`` frame indices of its span (ascending), by the
    authors' rule (see the module docstring); empty when none is available."""
    n = len(available)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n < clip_frames:
        return np.concatenate([available, np.full(clip_frames - n, available[-1])]).astype(np.int64)
    step = min(n // clip_frames, dilation)
    return np.ascontiguousarray(available[::-1][::step][:clip_frames][::-1]).astype(np.int64)


@dataclass(frozen=True)
class Windowing:
    """Window placement and clip sampling (see the module docstring)."""

    clips: int = 8
    clip_frames: int = 8
    dilation: int = 1
    layout: str = "strided"
    label_frame: str = "all"

    def __post_init__(self) -> None:
        if min(self.clips, self.clip_frames, self.dilation) < 1:
            raise ValueError(f"clips, clip_frames and dilation must be >= 1, got {self}")
        if self.layout not in WINDOW_LAYOUTS:
            raise ValueError(f"layout must be one of {WINDOW_LAYOUTS}, got {self.layout!r}")
        if self.label_frame not in LABEL_FRAMES:
            raise ValueError(f"label_frame must be one of {LABEL_FRAMES}, got {self.label_frame!r}")

    @classmethod
    def from_config(cls, config: object) -> Windowing:
        """The windowing of a ``ModelConfig`` (its clips, clip_frames, frame_dilation, window_layout, label_frame)."""
        return cls(config.clips, config.clip_frames, getattr(config, "frame_dilation", 1),
                   getattr(config, "window_layout", "strided"), getattr(config, "label_frame", "all"))

    @property
    def span(self) -> int:
        """Frames one clip covers (``S``)."""
        return self.clip_frames * self.dilation

    @property
    def length(self) -> int:
        """Frames one window covers (``W``)."""
        return self.clips * self.span

    @property
    def rows(self) -> int:
        """Label/prediction rows per window."""
        return self.length if self.label_frame == "all" else self.clips

    def starts(self, num_frames: int, stride: int | None = None, *, training: bool = False) -> list[int]:
        """First frame (may be negative for "tiled") of every window of a video of ``num_frames``.

        ``stride`` (frames) is for the "strided" layout; the "tiled" one places its windows itself.
        """
        if self.layout == "strided":
            return subsequence_starts(num_frames, self.length, stride or self.length)
        if stride not in (None, 1):
            raise ValueError(f"window_layout='tiled' places its windows itself (one frame apart, in blocks); "
                             f"a stride of {stride} does not apply")
        s, w = self.span, self.length
        # training: the window's last clip ends inside the video; evaluation: its first one does
        last = num_frames - w if training else num_frames - s
        out = []
        block = -(s - 1)
        while block <= last:
            out.extend(start for start in range(block, block + s) if start <= last)
            block += w
        return out

    def span_ends(self, start: int) -> np.ndarray:
        """int64 [L]: the last frame of each clip's span of the window starting at ``start``."""
        return start + self.span * np.arange(1, self.clips + 1, dtype=np.int64) - 1

    def clip_frame_indices(self, start: int, num_frames: int, available: np.ndarray | None = None) -> np.ndarray:
        """int64 [L, F]: the frame each clip shows, ``-1`` for a blank. "strided": the fixed grid (indices
        past the end are padding, left to the caller); "tiled": the authors' rule over the frames that
        are in the video and, when ``available`` (bool [num_frames]) is given, marked in it."""
        ends = self.span_ends(start)
        grid = ends[:, None] - self.dilation * np.arange(self.clip_frames - 1, -1, -1, dtype=np.int64)[None, :]
        if self.layout == "strided":
            return grid
        out = np.full((self.clips, self.clip_frames), -1, dtype=np.int64)
        for row, end in enumerate(ends):
            lo, hi = max(int(end) - self.span + 1, 0), min(int(end) + 1, num_frames)
            frames = np.arange(lo, hi, dtype=np.int64)
            if available is not None:
                frames = frames[available[lo:hi]]
            chosen = authors_clip_frames(frames, self.clip_frames, self.dilation)
            if len(chosen):
                out[row] = chosen
        return out

    def label_rows(self, start: int, shown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(frame_index, label_frame)``, int64 [rows] each: the video frame each prediction row is
        scored at, and the frame whose label it gets (the same, except for "last" while a clip's last
        shown frame is before its span's end: training on the authors' labelled frames). ``shown`` is
        `clip_frame_indices`' result."""
        if self.label_frame == "all":
            frames = start + np.arange(self.length, dtype=np.int64)
            return frames, frames
        ends = self.span_ends(start)
        last_shown = shown[:, -1]
        return ends, np.where(last_shown >= 0, np.minimum(last_shown, ends), ends)
