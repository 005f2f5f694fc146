"""Extract per-clip backbone features once, so that the fusion can be trained fast on them
(`ModelConfig(use_backbones=False)`, `model(xa=..., xv=...)`, `rja_models.data.FeatureDataset`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from rja_models.data import save_features
from rja_models.model import RJAModel


def extract_features(model: RJAModel, loader: Iterable[dict[str, Any]], out_dir: str | Path,
                     progress: bool = True) -> list[Path]:
    """Run `model.encode` over `loader` and write one feature file per video into `out_dir` with
    `rja_models.data.save_features` (format: see `rja_models.data.features`).

    `loader` yields batches of `AffWild2Dataset`/`VideoFileDataset` items: "frames"
    `[B, L, 3, F, H, W]`, "audio" `[B, L, S]`, "labels" `[B, L*F, n]`, "mask" `[B, L*F]`, "video"
    (B ids), "start_frame" `[B]`. Its windows must tile each video without overlap (the datasets'
    default stride) and come video after video (no shuffling): a video's file is written as soon
    as the next video starts, so memory holds one video at a time. A modality the model does not
    encode (single-modality models) is stored with 0 features per clip. Returns the files written.
    The model runs in eval mode (restored afterwards) without gradients.
    """
    config = model.config
    if (config.window_layout, config.frame_dilation, config.label_frame) != ("strided", 1, "all"):
        # The feature format has one label row per frame of back-to-back clips of consecutive frames.
        raise ValueError("feature extraction needs window_layout='strided', frame_dilation=1, label_frame='all'")
    out_dir = Path(out_dir)
    device = next(model.parameters()).device
    written: list[Path] = []
    pending: dict[str, list[dict[str, Any]]] = {}

    def flush(video: str) -> None:
        if (out_dir / f"{video}.pt") in written:
            raise ValueError(f"video {video!r} came back after its file was written; "
                             "extract_features needs a loader without shuffling")
        written.extend(save_features(out_dir, pending.pop(video), clip_frames=config.clip_frames,
                                     target_names=config.targets.names))

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="features", disable=not progress):
                frames, audio = (None if batch.get(k) is None else batch[k].to(device) for k in ("frames", "audio"))
                xa, xv = model.encode(frames, audio)
                for i, video in enumerate(batch["video"]):
                    video = str(video)
                    for other in [v for v in pending if v != video]:
                        flush(other)
                    pending.setdefault(video, []).append({
                        "video": video, "start_frame": int(batch["start_frame"][i]),
                        "xa": _row(xa, i, config.clips), "xv": _row(xv, i, config.clips),
                        "labels": batch["labels"][i], "mask": batch["mask"][i],
                        "scored": batch.get("scored", batch["mask"])[i],
                    })
            for video in list(pending):
                flush(video)
    finally:
        model.train(was_training)
    return written


def _row(x: Tensor | None, i: int, clips: int) -> Tensor:
    """Features of batch row `i` on the CPU, or `[L, 0]` for a modality the model does not encode."""
    return torch.zeros(clips, 0) if x is None else x[i].float().cpu()
