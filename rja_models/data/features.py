"""Precomputed per-clip features, so that fusion-only training reads no video.

One file per video, ``<dir>/<video>.pt``, written with ``torch.save`` of plain tensors, ints,
strings and lists (loadable with ``torch.load(weights_only=True)``)::

    {"format": 1, "video": str, "clip_frames": F, "target_names": [str, ...],
     "xa": float32 [N, da], "xv": float32 [N, dv],        # one row per clip
     "labels": float32 [N*F, T], "mask": bool [N*F],      # one row per frame
     "scored": bool [N*F]}  # optional: the frames the CCC scores (label not -5, crop or not); else "mask"
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .affwild2 import subsequence_starts
from .errors import DataError

_FORMAT = 1


def _cat(parts: list[Mapping[str, Any]], key: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.cat([torch.as_tensor(p[key]).detach().cpu().to(dtype) for p in parts])


def save_features(
    path: str | Path,
    records: Iterable[Mapping[str, Any]],
    *,
    clip_frames: int,
    target_names: Sequence[str] = ("valence", "arousal"),
) -> list[Path]:
    """Write per-video feature files into directory ``path``; return the files written.

    Each record holds ``"video"`` (str), ``"xa"`` [n, da], ``"xv"`` [n, dv] (n clips),
    ``"labels"`` [n*F, T], ``"mask"`` [n*F] and optionally ``"scored"`` [n*F] (the frames the CCC
    scores; default ``"mask"``) and ``"start_frame"`` (default 0). Records of
    one video may come in pieces, e.g. one per (unbatched) dataset item with stride
    ``clips * clip_frames``: they are ordered by ``start_frame`` and concatenated, and must tile the
    video without gap or overlap.
    """
    path = Path(path)
    pieces: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        pieces[str(record["video"])].append(record)
    path.mkdir(parents=True, exist_ok=True)
    written = []
    for video, parts in pieces.items():
        if "/" in video or "\\" in video or video.startswith("."):
            raise ValueError(f"video name {video!r} cannot be a file name")
        parts.sort(key=lambda r: int(r.get("start_frame", 0)))
        expected = int(parts[0].get("start_frame", 0))
        for part in parts:
            if int(part.get("start_frame", 0)) != expected:
                raise ValueError(
                    f"{video}: feature records start at frame {part.get('start_frame')}, expected "
                    f"{expected} (records must tile the video)"
                )
            expected += len(part["xa"]) * clip_frames

        data = {
            "format": _FORMAT,
            "video": video,
            "clip_frames": clip_frames,
            "target_names": list(target_names),
            "xa": _cat(parts, "xa", torch.float32),
            "xv": _cat(parts, "xv", torch.float32),
            "labels": _cat(parts, "labels", torch.float32),
            "mask": _cat(parts, "mask", torch.bool),
            "scored": torch.cat([torch.as_tensor(p.get("scored", p["mask"])).cpu().to(torch.bool) for p in parts]),
        }
        clips = len(data["xa"])
        if (
            len(data["xv"]) != clips
            or len(data["labels"]) != clips * clip_frames
            or len(data["mask"]) != len(data["labels"])
            or len(data["scored"]) != len(data["labels"])
        ):
            raise ValueError(
                f"{video}: {clips} audio clips, {len(data['xv'])} visual clips, {len(data['labels'])} "
                f"label rows, {len(data['mask'])} mask rows; need n, n, n*{clip_frames}, n*{clip_frames}"
            )
        file = path / f"{video}.pt"
        torch.save(data, file)
        written.append(file)
    return written


class FeatureDataset(Dataset):
    """Sub-sequences of ``clips`` clips from files written by :func:`save_features`.

    Items: ``"xa"`` [L, da], ``"xv"`` [L, dv], ``"labels"`` [L*F, T], ``"mask"`` [L*F] (False past
    the end of the video, where features and labels are zero), ``"scored"`` [L*F] (the frames the
    CCC scores: also those without a face crop; ``"mask"`` for files written without it),
    ``"video"``, ``"start_frame"``.

    Args:
        path: the directory of ``<video>.pt`` files.
        clips: L, clips per sub-sequence.
        stride: clips between sub-sequence starts; default ``clips`` (no overlap).
        videos: restrict to these videos (default: every file).

    Raises:
        DataError: an unreadable file, or files disagreeing on clip_frames, targets or feature sizes.
    """

    def __init__(
        self, path: str | Path, *, clips: int = 8, stride: int | None = None, videos: Sequence[str] | None = None
    ) -> None:
        self.path = Path(path)
        files = sorted(self.path.glob("*.pt")) if videos is None else [self.path / f"{v}.pt" for v in videos]
        if not files:
            raise DataError(self.path, "holds no feature file <video>.pt")
        self.clips = clips
        self.records = [self._load(f) for f in files]
        first = self.records[0]
        self.clip_frames: int = first["clip_frames"]
        self.target_names: list[str] = first["target_names"]
        self.feature_dims: tuple[int, int] = (first["xa"].shape[1], first["xv"].shape[1])
        for file, r in zip(files, self.records):
            if (r["clip_frames"], r["target_names"], (r["xa"].shape[1], r["xv"].shape[1])) != (
                self.clip_frames,
                self.target_names,
                self.feature_dims,
            ):
                raise DataError(file, f"clip_frames/targets/feature sizes differ from {files[0].name}")
        self.index = [
            (i, start)
            for i, r in enumerate(self.records)
            for start in subsequence_starts(len(r["xa"]), clips, stride or clips)
        ]

    @staticmethod
    def _load(file: Path) -> dict[str, Any]:
        try:
            data = torch.load(file, weights_only=True)
        except Exception as e:  # torch raises many types for a bad file
            raise DataError(file, f"not a feature file ({e})") from e
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise DataError(file, f"not a feature file of format {_FORMAT}")
        return data

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | str | int]:
        record_index, start = self.index[item]
        r = self.records[record_index]
        f, clips = self.clip_frames, self.clips

        def window(x: torch.Tensor, begin: int, length: int) -> torch.Tensor:
            out = x.new_zeros((length, *x.shape[1:]))
            part = x[begin : begin + length]
            out[: len(part)] = part
            return out

        return {
            "xa": window(r["xa"], start, clips),
            "xv": window(r["xv"], start, clips),
            "labels": window(r["labels"], start * f, clips * f),
            "mask": window(r["mask"], start * f, clips * f),
            "scored": window(r.get("scored", r["mask"]), start * f, clips * f),
            "video": r["video"],
            "start_frame": start * f,
        }
