"""Inference over a loader, frame-level series per video, and CCC over a whole split.

Each rank predicts its shard; the windows are gathered on every rank and laid out per video by frame
index (`rja_models.inference.windows.video_series`), so the CCC is computed over all frames of the
split (not averaged over ranks or batches), and a frame predicted twice (overlapping windows, padded
shards) counts once.

The protocol is the ABAW challenge's: every frame whose label is not -5 is scored, also a frame
without a face crop (its prediction is that of the clip it is in, whose input shows the neighbouring
crop in its place); the report counts those frames apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rja_models.inference.windows import VideoSeries, video_series
from rja_models.metrics import CCCAccumulator, postprocess
from rja_models.training.data import model_inputs
from rja_models.training.distributed import DistContext, all_gather_objects


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA when `dtype` is given, else nothing."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def predict_windows(model: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device, *,
                    amp_dtype: torch.dtype | None = None, progress: bool = False, desc: str = "eval"
                    ) -> list[dict[str, Any]]:
    """One record per window, numpy arrays: "video", "start_frame", "pred" [R, T] (one row per frame
    scored), "clip" [L, T] (the model's per-clip values the rows repeat), "labels", "mask" (the
    training mask), and where the batch has them "frames" [R] (each row's frame), "scored" [R] (the
    rows the CCC counts) and "face" [R] (the row's frame has its own face crop or detection)."""
    was_training = model.training
    model.eval()
    records = []
    try:
        for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
            with autocast(device, amp_dtype):
                out = model(**model_inputs(batch, device))
            pred, clip = (out[k].float().cpu().numpy() for k in ("frame", "clip"))
            for i, video in enumerate(batch["video"]):
                records.append({"video": str(video), "start_frame": int(batch["start_frame"][i]), "pred": pred[i],
                                "clip": clip[i], "labels": batch["labels"][i].numpy(),
                                "mask": batch["mask"][i].numpy()})
                # "frame_index": rows are not consecutive frames (dilated/tiled windows, last-frame labels)
                for key, name in (("frame_index", "frames"), ("scored", "scored"), ("face", "face")):
                    if key in batch:
                        records[-1][name] = batch[key][i].numpy()
    finally:
        model.train(was_training)
    return records


def gather_series(ctx: DistContext, records: list[dict[str, Any]]) -> dict[str, VideoSeries]:
    """The series of the whole split, on every rank."""
    return video_series([r for part in all_gather_objects(ctx, records) for r in part])


def ccc_report(series: dict[str, VideoSeries], names: Sequence[str], clip: tuple[float, float] = (-1.0, 1.0)
               ) -> dict[str, Any]:
    """`{"overall": {target: CCC, "mean": ...}, "videos": {video: {...}}, "frames": n,
    "frames_without_face": m, "postprocessed": {"overall": ..., "videos": ...}}` over the frames to
    score (`mask`; m of them without a face crop): the raw per-frame CCC, and the CCC after the
    authors' post-processing (`rja_models.metrics.postprocess`: clipped to `clip`, smoothed per video)."""
    acc, post = CCCAccumulator(names), CCCAccumulator(names)
    for video, s in series.items():
        labels, mask = torch.from_numpy(s.labels)[None], torch.from_numpy(s.mask)[None]
        acc.update(torch.from_numpy(s.pred)[None], labels, mask, videos=[video])
        post.update(torch.from_numpy(postprocess(s.pred, names, *clip))[None], labels, mask, videos=[video])
    without_face = sum(int((s.mask & ~s.face).sum()) for s in series.values())
    return {"overall": acc.compute(), "videos": acc.compute_per_video(), "frames": acc.frames,
            "frames_without_face": without_face,
            "postprocessed": {"overall": post.compute(), "videos": post.compute_per_video()}}


def format_table(rows: dict[str, dict[str, float]], names: Sequence[str], first: str = "video") -> str:
    """Fixed-width table: one row per key of `rows`, one column per target and the mean."""
    cols = [*names, "mean"]
    width = max([len(first), *(len(k) for k in rows)])
    lines = [f"{first:<{width}}  " + "  ".join(f"{c:>8}" for c in cols)]
    lines += [f"{key:<{width}}  " + "  ".join(f"{vals[c]:>8.4f}" for c in cols) for key, vals in rows.items()]
    return "\n".join(lines)
