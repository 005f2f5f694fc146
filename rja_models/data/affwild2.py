"""Aff-Wild2 layout datasets (face crops + per-frame annotations + the original video's audio),
and a dataset over one arbitrary video file for prediction.

Layout read here::

    root/videos/**/<video>.{mp4,avi,mkv,webm,mov}       original videos (carry the audio)
    root/cropped_aligned/<name>/<NNNNN>.jpg              face crops, 1-based frame index
    root/VA_Estimation_Challenge/<Split>/<name>.txt      "valence,arousal" then one line per frame

``<name>`` is a video name, or ``<video>_left`` / ``<video>_right`` for the two people of a
two-person video: both read the audio of ``<video>``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from .errors import DataError
from .video import VideoInfo, VideoReader, clip_audio_samples, fit_image, probe_video, require_audio, to_clips

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
SPLIT_FOLDERS = {"train": "Train_Set", "val": "Validation_Set"}
INVALID_LABEL = -5.0
_ASSUMED_FPS = 30.0  # Aff-Wild2's usual rate; only sizes the (all-zero) audio when no video is read


def read_annotation(
    path: str | Path, target_names: Sequence[str] | None = ("valence", "arousal")
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read an annotation file: a header of target names, then one comma-separated line per frame.

    Args:
        target_names: the header the file must have (case-insensitive); None accepts any header.

    Returns:
        ``(names, labels, valid)``: the header's names; float32 [N, T] labels, rows with a -5 set to
        0; bool [N], False for rows with a -5 (invalid frames).

    Raises:
        DataError: wrong header, a malformed line, or a label outside [-1, 1] other than -5.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read annotation ({e})") from e
    while lines and not lines[-1].strip():
        lines.pop()
    names = [n.strip().lower() for n in lines[0].split(",")] if lines else []
    if target_names is not None and names != [n.lower() for n in target_names]:
        raise DataError(
            path, f"annotation header is {lines[0] if lines else '(empty file)'!r}, expected {','.join(target_names)!r}"
        )
    body = [line.split(",") for line in lines[1:]]
    try:
        values = np.array(body, dtype=np.float64).reshape(len(body), len(names))
    except ValueError:
        for number, fields in enumerate(body, start=2):
            try:
                if len([float(f) for f in fields]) != len(names):
                    raise ValueError
            except ValueError:
                raise DataError(path, f"line {number} is not {len(names)} numbers: {','.join(fields)!r}") from None
        raise
    invalid = values == INVALID_LABEL
    bad = ~invalid & ((values < -1.0) | (values > 1.0) | np.isnan(values))
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise DataError(path, f"line {row + 2}: label {values[row].tolist()} outside [-1, 1] (and not -5)")
    valid = ~invalid.any(axis=1)
    labels = np.where(valid[:, None], values, 0.0).astype(np.float32)
    return names, labels, valid


def _crop_fill(folder: Path, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(has_crop bool [N], fill int [N]): which frames have a crop, and which crop stands in for each
    frame (itself, else the nearest previous one, else the next one, else -1)."""
    has = np.zeros(num_frames, dtype=bool)
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise DataError(folder, f"cannot list face crops ({e})") from e
    for entry in entries:
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() == ".jpg" and stem.isdigit() and 1 <= int(stem) <= num_frames:
            has[int(stem) - 1] = True
    if not has.any():
        raise DataError(folder, "holds no face crop <NNNNN>.jpg for the annotated frames")
    frames = np.arange(num_frames)
    previous = np.maximum.accumulate(np.where(has, frames, -1))
    following = np.minimum.accumulate(np.where(has, frames, num_frames)[::-1])[::-1]
    return has, np.where(previous >= 0, previous, following)


def subsequence_starts(num_frames: int, length: int, stride: int) -> list[int]:
    """Start frames of windows of ``length`` every ``stride`` frames, the last one reaching the end."""
    starts = list(range(0, max(num_frames - length, 0) + 1, stride))
    if starts[-1] + length < num_frames:
        starts.append(starts[-1] + stride)
    return starts


@dataclass
class _Sequence:
    name: str
    labels: np.ndarray  # float32 [N, T]
    mask: np.ndarray  # bool [N]: valid label and a crop present
    fill: np.ndarray  # int [N]: crop index shown for each frame
    crops: Path
    video: VideoInfo | None


class AffWild2Dataset(Dataset):
    """Sub-sequences of ``clips`` clips of ``clip_frames`` frames from an Aff-Wild2-layout tree.

    Each item is a dict:

    * ``"frames"``: float32 [L, 3, F, H, W] in [0, 1], face crops; a frame without a crop shows the
      nearest previous (else next) crop, padding past the end is zeros;
    * ``"audio"``: float32 [L, S], clip ``l``'s audio from the original video, starting at the
      timestamp of the clip's first frame (zeros when ``visual_only``);
    * ``"labels"``: float32 [L*F, T] (0 where invalid); ``"mask"``: bool [L*F], False for a -5
      label, a missing crop or padding past the end of the video;
    * ``"video"``: the sequence name; ``"start_frame"``: 0-based index of the first frame.

    Args:
        root: the tree's root directory.
        split: "train", "val" (Train_Set / Validation_Set) or a folder of VA_Estimation_Challenge.
        stride: frames between sub-sequence starts; default ``clips * clip_frames`` (no overlap).
        sample_rate: audio rate (mono).
        image_size: crops are resized/center-cropped to this square.
        videos: restrict to these sequence names (default: every annotation file of the split).
        visual_only: read no audio (videos may lack an audio stream or be absent).
        audio_samples: ``S``; default one clip's duration at the most common frame rate of the
            split's videos. A clip of a video at another rate gets its own duration's audio,
            zero-padded or trimmed at its end to ``S``.
        target_names: the annotation header every file must have; None takes the first file's.
        progress: show a progress bar while scanning the videos.

    Raises:
        DataError: missing folder/video/crops, unreadable video, no audio stream (see
            ``visual_only``), bad annotation, or annotation line count != the video's frame count.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        clip_frames: int = 8,
        clips: int = 8,
        stride: int | None = None,
        sample_rate: int = 16000,
        image_size: int = 112,
        videos: Sequence[str] | None = None,
        visual_only: bool = False,
        audio_samples: int | None = None,
        target_names: Sequence[str] | None = ("valence", "arousal"),
        progress: bool = True,
    ) -> None:
        self.root = Path(root)
        self.clip_frames, self.clips = clip_frames, clips
        self.stride = stride or clips * clip_frames
        self.sample_rate, self.image_size, self.visual_only = sample_rate, image_size, visual_only
        folder = self.root / "VA_Estimation_Challenge" / SPLIT_FOLDERS.get(split, split)
        if not folder.is_dir():
            raise DataError(folder, f"no such annotation folder (split {split!r}: 'train', 'val' or a folder name)")
        names = sorted(p.stem for p in folder.glob("*.txt")) if videos is None else list(videos)
        video_files = self._video_files()
        self.sequences: list[_Sequence] = []
        for name in tqdm(names, desc=f"indexing {folder.name}", disable=not progress):
            names_found, labels, label_ok = read_annotation(folder / f"{name}.txt", target_names)
            target_names = names_found  # every file must match the first one
            video = self._probe(name, video_files)
            if video is not None and video.num_frames != len(labels):
                raise DataError(
                    folder / f"{name}.txt", f"{len(labels)} label lines but {video.path} has {video.num_frames} frames"
                )
            crops = self.root / "cropped_aligned" / name
            has_crop, fill = _crop_fill(crops, len(labels))
            self.sequences.append(_Sequence(name, labels, label_ok & has_crop, fill, crops, video))
        self.target_names: list[str] = list(target_names or [])
        fps = Counter(round(s.video.fps, 2) for s in self.sequences if s.video is not None).most_common(1)
        self.audio_samples = audio_samples or clip_audio_samples(
            clip_frames, fps[0][0] if fps else _ASSUMED_FPS, sample_rate
        )
        self.index = [
            (i, start)
            for i, s in enumerate(self.sequences)
            for start in subsequence_starts(len(s.labels), clips * clip_frames, self.stride)
        ]

    def _video_files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted((self.root / "videos").rglob("*")):
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                found.setdefault(path.stem, path)
        return found

    def _probe(self, name: str, video_files: dict[str, Path]) -> VideoInfo | None:
        """The metadata of the video carrying ``name``'s audio (``_left``/``_right`` share one)."""
        base = name.removesuffix("_left").removesuffix("_right")
        path = video_files.get(name) or video_files.get(base)
        if path is None:
            if self.visual_only:
                return None
            raise DataError(
                self.root / "videos" / f"{base}.mp4",
                f"no video file for {name!r} (tried {', '.join(VIDEO_EXTENSIONS)}); "
                "pass visual_only=True to train on the crops alone",
            )
        info = probe_video(path)
        if not self.visual_only:
            require_audio(info)
        return info

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | str | int]:
        seq_index, start = self.index[item]
        seq = self.sequences[seq_index]
        total = self.clips * self.clip_frames
        end = min(start + total, len(seq.labels))
        size = self.image_size
        images = np.zeros((total, size, size, 3), dtype=np.uint8)
        loaded: dict[int, np.ndarray] = {}  # a missing crop repeats a neighbour: read each file once
        for j, crop in enumerate(seq.fill[start:end]):
            if crop not in loaded:
                with Image.open(seq.crops / f"{crop + 1:05d}.jpg") as image:
                    loaded[crop] = fit_image(image, size)
            images[j] = loaded[crop]
        labels = torch.zeros(total, seq.labels.shape[1])
        labels[: end - start] = torch.from_numpy(seq.labels[start:end])
        mask = torch.zeros(total, dtype=torch.bool)
        mask[: end - start] = torch.from_numpy(seq.mask[start:end])
        return {
            "frames": to_clips(images, self.clips, self.clip_frames),
            "audio": self._audio(seq, start),
            "labels": labels,
            "mask": mask,
            "video": seq.name,
            "start_frame": start,
        }

    def _audio(self, seq: _Sequence, start: int) -> torch.Tensor:
        if self.visual_only or seq.video is None:
            return torch.zeros(self.clips, self.audio_samples)
        info = seq.video
        starts = [info.frame_time(start + c * self.clip_frames) for c in range(self.clips)]
        with VideoReader(info.path, sample_rate=self.sample_rate, image_size=None) as reader:
            span = clip_audio_samples(self.clip_frames, info.fps, self.sample_rate)
            return torch.from_numpy(reader.read_clip_audio(starts, span, self.audio_samples))


class VideoFileDataset(Dataset):
    """Consecutive sub-sequences covering one video file (for prediction; no labels).

    Items have the keys of :class:`AffWild2Dataset`; ``"frames"`` are the whole decoded frames
    resized/center-cropped to ``image_size`` (no face detection), ``"labels"`` are zeros and
    ``"mask"`` is all False. Frames ``>= num_frames`` of the last item are padding (they repeat the
    last frame).

    Raises:
        DataError: unreadable/truncated video, or no audio stream unless ``visual_only``.
    """

    def __init__(
        self,
        path: str | Path,
        clip_frames: int = 8,
        clips: int = 8,
        *,
        stride: int | None = None,
        sample_rate: int = 16000,
        image_size: int = 112,
        visual_only: bool = False,
        audio_samples: int | None = None,
        num_targets: int = 2,
    ) -> None:
        self.path = Path(path)
        self.info = probe_video(self.path)
        if not visual_only:
            require_audio(self.info)
        self.clip_frames, self.clips, self.num_targets = clip_frames, clips, num_targets
        self.sample_rate, self.image_size, self.visual_only = sample_rate, image_size, visual_only
        self.audio_samples = audio_samples or clip_audio_samples(clip_frames, self.info.fps, sample_rate)
        self.starts = subsequence_starts(self.num_frames, clips * clip_frames, stride or clips * clip_frames)

    @property
    def num_frames(self) -> int:
        """Frames in the video."""
        return self.info.num_frames

    @property
    def fps(self) -> float:
        """Nominal frame rate of the video."""
        return self.info.fps

    def timestamps(self) -> torch.Tensor:
        """float64 [num_frames]: presentation time in seconds of each frame."""
        return torch.from_numpy(self.info.timestamps.copy())

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | str | int]:
        start = self.starts[item]
        total = self.clips * self.clip_frames
        with VideoReader(self.path, sample_rate=self.sample_rate, image_size=self.image_size) as reader:
            clip = reader.read_clips(
                start,
                clips=self.clips,
                clip_frames=self.clip_frames,
                audio_samples=self.audio_samples,
                visual_only=self.visual_only,
            )
        return {
            "frames": clip["frames"],
            "audio": clip["audio"],
            "labels": torch.zeros(total, self.num_targets),
            "mask": torch.zeros(total, dtype=torch.bool),
            "video": self.path.stem,
            "start_frame": start,
        }
