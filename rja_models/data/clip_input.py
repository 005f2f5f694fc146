"""One window of decoded frames and audio as the model's input: which frames its clips show, when
each clip's audio starts, and the item dict that `predict_windows` batches.

Shared by the datasets (frames read from a file) and `rja_models.inference.stream` (frames decoded
from a live source), so a window cut from a stream is the same input as the same window of a file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .video import AudioWindow, to_clips
from .windows import Windowing


def shown_frames(windowing: Windowing, start: int, num_frames: int) -> np.ndarray:
    """int64 [L, F]: the frame each clip of the window at ``start`` shows; with the "strided" layout,
    frames past the end of a video of ``num_frames`` repeat its last frame (the "tiled" layout marks
    them -1, a blank)."""
    shown = windowing.clip_frame_indices(start, num_frames)
    return np.minimum(shown, num_frames - 1) if windowing.layout == "strided" else shown


def clip_spans(windowing: Windowing, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) frame of each clip's span, int64 [L] each: the frames its audio is timed by."""
    ends = windowing.span_ends(start)
    return ends - windowing.span + 1, ends


def model_audio_window(config: Any, extra: dict[str, Any] | None, fps: float) -> AudioWindow:
    """The clip audio a ``ModelConfig`` was trained with (see `AudioWindow.from_config`), else one clip
    span at ``fps``, as `VideoFileDataset.for_model` cuts it."""
    window = AudioWindow.from_config(config, extra)
    return AudioWindow.for_clips(window and window.seconds, None, config.sample_rate, config.audio_anchor, fps,
                                 config.clip_span)


def window_item(windowing: Windowing, start: int, shown: np.ndarray, images: np.ndarray, audio: np.ndarray,
                *, num_targets: int, name: str) -> dict[str, Any]:
    """The unlabelled item of one window (the keys of `AffWild2Dataset`'s items): ``images`` uint8
    [L*F, H, W, 3] are the frames ``shown`` (`shown_frames`) in order, ``audio`` float32 [L, S] each
    clip's samples; labels zero, mask all False, ``frame_index`` the frame each prediction row is for."""
    rows, _ = windowing.label_rows(start, shown)
    return {
        "frames": to_clips(images, windowing.clips, windowing.clip_frames),
        "audio": torch.as_tensor(np.asarray(audio, dtype=np.float32)),
        "labels": torch.zeros(len(rows), num_targets),
        "mask": torch.zeros(len(rows), dtype=torch.bool),
        "frame_index": torch.from_numpy(rows),
        "video": name,
        "start_frame": start,
    }
