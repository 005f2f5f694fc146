"""Extract per-clip backbone features once, so that the fusion can be trained fast on them
(`ModelConfig(use_backbones=False)`, `model(xa=..., xv=...)`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from rja_models.model import RJAModel

SaveFn = Callable[[Path, dict[str, Any]], None]


def _default_save() -> SaveFn:
    from rja_models.data import save_features  # the data package owns the on-disk feature format

    return save_features


def extract_features(model: RJAModel, loader: Iterable[dict[str, Any]], out_dir: str | Path,
                     progress: bool = True, save: SaveFn | None = None) -> list[Path]:
    """Run `model.encode` over `loader` and write one feature file per video.

    `loader` yields batches of `AffWild2Dataset` items: "frames" `[B, L, 3, F, H, W]`, "audio"
    `[B, L, S]`, "labels" `[B, L*F, n]`, "mask" `[B, L*F]`, "video" (B ids), "start_frame" `[B]`.
    It must deliver each video's windows contiguously (no shuffling); a video is written as soon as
    the next one starts. Each file `out_dir/<video>.pt` is written by `save(path, record)` (default
    `rja_models.data.save_features`) with the record

        {"video": str, "start_frame": int64 [W], "xa": [W, L, da] | None, "xv": [W, L, dv] | None,
         "labels": [W, L*F, n], "mask": bool [W, L*F]}

    for the W windows of the video in start-frame order; features are float32 on the CPU.
    Returns the paths written. The model runs in eval mode (restored afterwards) without gradients.
    """
    save = _default_save() if save is None else save
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    written: list[Path] = []
    done: set[str] = set()
    pending: dict[str, list[dict[str, Any]]] = {}

    def flush(video: str) -> None:
        rows = sorted(pending.pop(video), key=lambda r: r["start_frame"])
        record = {"video": video, "start_frame": torch.tensor([r["start_frame"] for r in rows], dtype=torch.int64)}
        for key in ("xa", "xv", "labels", "mask"):
            record[key] = None if rows[0][key] is None else torch.stack([r[key] for r in rows])
        path = out_dir / f"{video}.pt"
        save(path, record)
        written.append(path)
        done.add(video)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="features", disable=not progress):
                frames, audio = (_to(batch.get(k), device) for k in ("frames", "audio"))
                xa, xv = model.encode(frames, audio)
                for i, video in enumerate(batch["video"]):
                    video = str(video)
                    if video in done:
                        raise ValueError(f"video {video!r} came back after its file was written; "
                                         "extract_features needs a loader without shuffling")
                    for other in [v for v in pending if v != video]:
                        flush(other)
                    pending.setdefault(video, []).append({
                        "start_frame": int(batch["start_frame"][i]),
                        "xa": _row(xa, i), "xv": _row(xv, i),
                        "labels": batch["labels"][i].float(), "mask": batch["mask"][i].bool(),
                    })
            for video in list(pending):
                flush(video)
    finally:
        model.train(was_training)
    return written


def _to(x: Tensor | None, device: torch.device) -> Tensor | None:
    return None if x is None else x.to(device, non_blocking=True)


def _row(x: Tensor | None, i: int) -> Tensor | None:
    return None if x is None else x[i].float().cpu()
