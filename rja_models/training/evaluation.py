"""Inference over a loader, frame-level series per video, and CCC over a whole split.

Each rank predicts its shard; the windows are gathered on every rank and laid out per video by frame
index, so the CCC is computed over all frames of the split (not averaged over ranks or batches),
and a frame predicted twice (overlapping windows, padded shards) counts once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rja_models.metrics import CCCAccumulator, postprocess
from rja_models.training.data import model_inputs
from rja_models.training.distributed import DistContext, all_gather_objects


@dataclass
class VideoSeries:
    """Frame-level arrays of one video: `pred`, `labels` float32 [N, T], `mask` bool [N] (a label
    to score), `seen` bool [N] (a prediction exists)."""

    pred: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    seen: np.ndarray


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA when `dtype` is given, else nothing."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def predict_windows(model: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device, *,
                    amp_dtype: torch.dtype | None = None, progress: bool = False, desc: str = "eval"
                    ) -> list[dict[str, Any]]:
    """One record per window: video, start_frame, frame predictions/labels/mask as numpy arrays."""
    was_training = model.training
    model.eval()
    records = []
    try:
        for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
            with autocast(device, amp_dtype):
                pred = model(**model_inputs(batch, device))["frame"].float().cpu().numpy()
            for i, video in enumerate(batch["video"]):
                records.append({"video": str(video), "start_frame": int(batch["start_frame"][i]), "pred": pred[i],
                                "labels": batch["labels"][i].numpy(), "mask": batch["mask"][i].numpy()})
                if "frame_index" in batch:  # rows are not consecutive frames (dilated/tiled windows, last-frame labels)
                    records[-1]["frames"] = batch["frame_index"][i].numpy()
    finally:
        model.train(was_training)
    return records


def video_series(records: Sequence[dict[str, Any]]) -> dict[str, VideoSeries]:
    """Lay windows out per video by frame index (a later window overwrites an earlier one's frames)."""
    by_video: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_video.setdefault(r["video"], []).append(r)
    out = {}
    for video, rows in sorted(by_video.items()):
        length = max(int(_row_frames(r).max()) + 1 for r in rows)
        targets = rows[0]["pred"].shape[-1]
        s = VideoSeries(np.zeros((length, targets), np.float32), np.zeros((length, targets), np.float32),
                        np.zeros(length, bool), np.zeros(length, bool))
        for r in rows:
            at = _row_frames(r)
            keep = at >= 0  # the authors' first windows start before the video
            at = at[keep]
            s.pred[at], s.labels[at], s.mask[at], s.seen[at] = r["pred"][keep], r["labels"][keep], r["mask"][keep], True
        # Windows pad past the end of a video (mask False): trim after the last labelled frame, if any.
        labelled = np.flatnonzero(s.mask)
        end = int(labelled[-1]) + 1 if len(labelled) else length
        out[video] = VideoSeries(s.pred[:end], s.labels[:end], s.mask[:end], s.seen[:end])
    return out


def _row_frames(record: dict[str, Any]) -> np.ndarray:
    """The frame of each row of a window record: its "frames", else consecutive from "start_frame"."""
    if "frames" in record:
        return np.asarray(record["frames"], dtype=np.int64)
    return record["start_frame"] + np.arange(len(record["pred"]), dtype=np.int64)


def gather_series(ctx: DistContext, records: list[dict[str, Any]]) -> dict[str, VideoSeries]:
    """The series of the whole split, on every rank."""
    return video_series([r for part in all_gather_objects(ctx, records) for r in part])


def ccc_report(series: dict[str, VideoSeries], names: Sequence[str], clip: tuple[float, float] = (-1.0, 1.0)
               ) -> dict[str, Any]:
    """`{"overall": {target: CCC, "mean": ...}, "videos": {video: {...}}, "frames": n, "postprocessed":
    {"overall": ..., "videos": ...}}` over valid frames: the raw per-frame CCC, and the CCC after the
    authors' post-processing (`rja_models.metrics.postprocess`: clipped to `clip`, smoothed per video)."""
    acc, post = CCCAccumulator(names), CCCAccumulator(names)
    for video, s in series.items():
        labels, mask = torch.from_numpy(s.labels)[None], torch.from_numpy(s.mask)[None]
        acc.update(torch.from_numpy(s.pred)[None], labels, mask, videos=[video])
        post.update(torch.from_numpy(postprocess(s.pred, names, *clip))[None], labels, mask, videos=[video])
    return {"overall": acc.compute(), "videos": acc.compute_per_video(), "frames": acc.frames,
            "postprocessed": {"overall": post.compute(), "videos": post.compute_per_video()}}


def format_table(rows: dict[str, dict[str, float]], names: Sequence[str], first: str = "video") -> str:
    """Fixed-width table: one row per key of `rows`, one column per target and the mean."""
    cols = [*names, "mean"]
    width = max([len(first), *(len(k) for k in rows)])
    lines = [f"{first:<{width}}  " + "  ".join(f"{c:>8}" for c in cols)]
    lines += [f"{key:<{width}}  " + "  ".join(f"{vals[c]:>8.4f}" for c in cols) for key, vals in rows.items()]
    return "\n".join(lines)
