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
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from .clip_input import clip_spans, shown_frames, window_item
from .errors import DataError
from .video import (
    AudioWindow,
    VideoInfo,
    VideoReader,
    fit_image,
    probe_video,
    require_audio,
    to_clips,
)
from .windows import Windowing, subsequence_starts  # noqa: F401 (data.features imports it from here)

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


def jitter_clips(frames: torch.Tensor, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The authors' training augmentation (``RandomColorAugment``): per clip, a brightness factor and
    then a contrast factor (blend with each frame's mean gray level), each uniform in
    ``[1 - amount, 1 + amount]``. ``frames`` float [L, 3, F, H, W] in [0, 1]."""
    clips = frames.shape[0]
    shape = (clips, 1, 1, 1, 1)
    brightness = 1 + (torch.rand(clips, generator=generator) * 2 - 1) * amount
    contrast = 1 + (torch.rand(clips, generator=generator) * 2 - 1) * amount
    x = (frames * brightness.view(shape)).clamp_(0, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(-2, -1), keepdim=True).unsqueeze(1)
    return (contrast.view(shape) * x + (1 - contrast.view(shape)) * gray).clamp_(0, 1)


def dataset_options(config: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of `AffWild2Dataset` / `VideoFileDataset` that cut clips as ``config`` (a
    ``ModelConfig``) was trained on: clips, frames, dilation, layout, labels, image size and the audio
    window (``extra``: the checkpoint's extras, for checkpoints that stored the window in samples)."""
    window = AudioWindow.from_config(config, extra)
    return {
        "clips": config.clips, "clip_frames": config.clip_frames, "dilation": config.frame_dilation,
        "layout": config.window_layout, "label_frame": config.label_frame, "sample_rate": config.sample_rate,
        "image_size": config.image_size, "audio_seconds": None if window is None else window.seconds,
        "audio_anchor": config.audio_anchor,
    }


@dataclass
class _Sequence:
    name: str
    labels: np.ndarray  # float32 [N, T]
    valid: np.ndarray  # bool [N]: a valid label (not -5)
    has_crop: np.ndarray  # bool [N]: the frame's own crop is present
    fill: np.ndarray  # int [N]: crop index shown for each frame
    crops: Path
    video: VideoInfo | None

    @property
    def mask(self) -> np.ndarray:
        """bool [N]: the frames trained on: a valid label and the frame's own crop."""
        return self.valid & self.has_crop


def _labels(windowing: Windowing, start: int, shown: np.ndarray, seq: _Sequence) -> dict[str, torch.Tensor]:
    """The label keys of one window's item (see `AffWild2Dataset`); rows outside the video get label
    0 and mask, scored and face False."""
    rows, label_at = windowing.label_rows(start, shown)
    n = len(seq.valid)
    inside = (rows >= 0) & (rows < n) & (label_at >= 0) & (label_at < n)
    at = np.clip(label_at, 0, max(n - 1, 0))
    values = np.where(inside[:, None], seq.labels[at], 0.0).astype(np.float32)
    scored, face = inside & seq.valid[at], inside & seq.has_crop[at]
    return {"labels": torch.from_numpy(values), "mask": torch.from_numpy(scored & face),
            "scored": torch.from_numpy(scored), "face": torch.from_numpy(face), "frame_index": torch.from_numpy(rows)}


class AffWild2Dataset(Dataset):
    """Sub-sequences of ``clips`` clips of ``clip_frames`` frames from an Aff-Wild2-layout tree.

    Window placement and clip sampling follow `rja_models.data.windows` (``dilation``, ``layout``,
    ``label_frame``; the defaults are back-to-back windows of consecutive frames, every frame
    labelled). Each item is a dict:

    * ``"frames"``: float32 [L, 3, F, H, W] in [0, 1], face crops; a frame without a crop shows the
      nearest previous (else next) crop, padding past the end and blank clips are zeros;
    * ``"audio"``: float32 [L, S], each clip's audio from the original video, ``S`` samples from the
      time of the clip span's first frame (``audio_anchor="start"``) or up to its last (``"end"``),
      see `AudioWindow` (zeros when ``visual_only``);
    * ``"labels"``: float32 [R, T] (0 where invalid); ``"mask"``: bool [R], the rows trained on,
      False for a -5 label, a missing crop or a row outside the video; ``"scored"``: bool [R], the
      rows evaluation scores (the ABAW protocol: every valid label in the video, crop or not);
      ``"face"``: bool [R], the row's frame has its own crop; ``"frame_index"``: int64 [R], the frame
      each row is scored at (R = L * F * dilation rows, or L with ``label_frame="last"``);
    * ``"video"``: the sequence name; ``"start_frame"``: 0-based index of the first frame (negative
      for the first windows of the "tiled" layout).

    Args:
        root: the tree's root directory.
        split: "train", "val" (Train_Set / Validation_Set) or a folder of VA_Estimation_Challenge.
        stride: frames between sub-sequence starts ("strided" layout); default the window length.
        sample_rate: audio rate (mono).
        image_size: crops are resized/center-cropped to this square.
        videos: restrict to these sequence names (default: every annotation file of the split).
        visual_only: read no audio (videos may lack an audio stream or be absent).
        audio_seconds: audio per clip, seconds (the same at any frame rate); default
            ``audio_samples`` at ``sample_rate``, else one clip span at the most common frame rate of
            the split's videos.
        audio_anchor: "start" or "end" (see `AudioWindow`).
        dilation, layout, label_frame: see `rja_models.data.windows`.
        training: the training set: "tiled" windows must end inside the video and show the frames
            that are labelled (with a crop), windows with a clip without any are dropped (the
            authors'); ``color_jitter`` applies.
        color_jitter: see `jitter_clips` (training only; 0: none).
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
        audio_seconds: float | None = None,
        audio_anchor: str = "start",
        dilation: int = 1,
        layout: str = "strided",
        label_frame: str = "all",
        training: bool = False,
        color_jitter: float = 0.0,
        target_names: Sequence[str] | None = ("valence", "arousal"),
        progress: bool = True,
    ) -> None:
        self.root = Path(root)
        self.clip_frames, self.clips = clip_frames, clips
        self.windowing = Windowing(clips, clip_frames, dilation, layout, label_frame)
        self.windowing.starts(0, stride)  # a stride with the tiled layout is an error, before any file is read
        self.stride = stride or self.windowing.length
        self.sample_rate, self.image_size, self.visual_only = sample_rate, image_size, visual_only
        self.training, self.color_jitter = training, color_jitter
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
            self.sequences.append(_Sequence(name, labels, label_ok, has_crop, fill, crops, video))
        self.target_names: list[str] = list(target_names or [])
        fps = Counter(round(s.video.fps, 2) for s in self.sequences if s.video is not None).most_common(1)
        self.audio_window = AudioWindow.for_clips(audio_seconds, audio_samples, sample_rate, audio_anchor,
                                                  fps[0][0] if fps else _ASSUMED_FPS, self.windowing.span)
        self.audio_samples = self.audio_window.samples
        self.index = [(i, start) for i, s in enumerate(self.sequences) for start in self._starts(s)]

    def _starts(self, seq: _Sequence) -> list[int]:
        w, n = self.windowing, len(seq.labels)
        starts = w.starts(n, None if w.layout == "tiled" else self.stride, training=self.training)
        if not (self.training and w.layout == "tiled") or not starts:
            return starts
        # The authors keep a training window only if each of its clips shows a labelled frame.
        count = np.concatenate([[0], np.cumsum(seq.mask)])
        ends = np.asarray(starts)[:, None] + w.span * np.arange(1, w.clips + 1)[None, :] - 1
        shown = count[np.clip(ends + 1, 0, n)] - count[np.clip(ends + 1 - w.span, 0, n)]
        return [s for s, ok in zip(starts, (shown > 0).all(axis=1)) if ok]

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
        w, n = self.windowing, len(seq.labels)
        available = seq.mask if self.training and w.layout == "tiled" else None
        shown = w.clip_frame_indices(start, n, available)
        size = self.image_size
        images = np.zeros((shown.size, size, size, 3), dtype=np.uint8)
        loaded: dict[int, np.ndarray] = {}  # a missing crop repeats a neighbour: read each file once
        for j, frame in enumerate(shown.reshape(-1)):
            if 0 <= frame < n:
                crop = int(seq.fill[frame])
                if crop not in loaded:
                    with Image.open(seq.crops / f"{crop + 1:05d}.jpg") as image:
                        loaded[crop] = fit_image(image, size)
                images[j] = loaded[crop]
        frames = to_clips(images, self.clips, self.clip_frames)
        if self.training and self.color_jitter > 0:
            frames = jitter_clips(frames, self.color_jitter)
        return {"frames": frames, "audio": self._audio(seq, start), **_labels(w, start, shown, seq),
                "video": seq.name, "start_frame": start}

    def _audio(self, seq: _Sequence, start: int) -> torch.Tensor:
        if self.visual_only or seq.video is None:
            return torch.zeros(self.clips, self.audio_samples)
        ends = self.windowing.span_ends(start)
        with VideoReader(seq.video.path, sample_rate=self.sample_rate, image_size=None) as reader:
            audio = reader.clip_audio(ends - self.windowing.span + 1, ends, self.audio_window)
        return torch.from_numpy(audio)


class VideoFileDataset(Dataset):
    """The sub-sequences covering one video file (for prediction; no labels).

    Items have the keys of :class:`AffWild2Dataset` but "scored" and "face"
    (`rja_models.data.clip_input.window_item`: the input live mode makes of the same frames);
    ``"frames"`` are the whole decoded frames resized/center-cropped to ``image_size``, or the given
    face ``crops``; ``"labels"`` are zeros and ``"mask"`` is all False. With the default "strided"
    layout, frames ``>= num_frames`` of the last item are padding (they repeat the last frame); with
    "tiled", clips past the end are blank. ``audio_seconds`` (default: ``audio_samples`` at
    ``sample_rate``, else one clip span at this video's frame rate) is the audio each clip gets, the
    same span of time at any frame rate. `for_model` builds one that cuts clips as a trained model's
    config says.

    Args:
        stride: frames between window starts ("strided" layout; default the window length, no overlap).
        crops: uint8 [num_frames, image_size, image_size, 3] (an array or a memmap): the visual input
            of each frame (aligned face crops) instead of the decoded frame.

    Raises:
        DataError: unreadable/truncated video, or no audio stream unless ``visual_only``.
        ValueError: ``crops`` of the wrong shape or type.
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
        audio_seconds: float | None = None,
        audio_anchor: str = "start",
        dilation: int = 1,
        layout: str = "strided",
        label_frame: str = "all",
        num_targets: int = 2,
        crops: np.ndarray | None = None,
    ) -> None:
        self.path = Path(path)
        self.info = probe_video(self.path)
        if not visual_only:
            require_audio(self.info)
        n = self.info.num_frames
        if crops is not None and (crops.shape != (n, image_size, image_size, 3) or crops.dtype != np.uint8):
            raise ValueError(f"crops must be uint8 [{n}, {image_size}, {image_size}, 3], got {crops.dtype} "
                             f"{list(crops.shape)}")
        self.crops = crops
        self.clip_frames, self.clips, self.num_targets = clip_frames, clips, num_targets
        self.windowing = Windowing(clips, clip_frames, dilation, layout, label_frame)
        self.sample_rate, self.image_size, self.visual_only = sample_rate, image_size, visual_only
        self.audio_window = AudioWindow.for_clips(audio_seconds, audio_samples, sample_rate, audio_anchor,
                                                  self.info.fps, self.windowing.span)
        self.audio_samples = self.audio_window.samples
        self.starts = self.windowing.starts(self.num_frames, stride)

    @classmethod
    def for_model(cls, path: str | Path, config: Any, extra: dict[str, Any] | None = None, *,
                  visual_only: bool = False, stride: int | None = None, crops: np.ndarray | None = None
                  ) -> VideoFileDataset:
        """The dataset of ``path`` cut as ``config`` (a ``ModelConfig``) was trained on, see `dataset_options`."""
        return cls(path, stride=stride, visual_only=visual_only, num_targets=config.targets.count, crops=crops,
                   **dataset_options(config, extra))

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
        w, n = self.windowing, self.num_frames
        shown = shown_frames(w, start, n)
        flat = shown.reshape(-1)
        wanted = flat[(flat >= 0) & (flat < n)]
        images = np.zeros((len(flat), self.image_size, self.image_size, 3), dtype=np.uint8)
        audio = np.zeros((self.clips, self.audio_samples), np.float32)
        if self.crops is not None:
            images[flat >= 0] = self.crops[flat[flat >= 0]]
        if self.crops is None or not self.visual_only:
            with VideoReader(self.path, sample_rate=self.sample_rate, image_size=self.image_size) as reader:
                if self.crops is None and len(wanted):
                    first, last = int(wanted.min()), int(wanted.max())
                    decoded = dict(zip(range(first, last + 1), (image for _, image in
                                                                 reader.iter_frames(first, last - first + 1))))
                    for j, frame in enumerate(flat):
                        if frame in decoded:
                            images[j] = decoded[frame]
                if not self.visual_only:
                    audio = reader.clip_audio(*clip_spans(w, start), self.audio_window)
        return window_item(w, start, shown, images, audio, num_targets=self.num_targets, name=self.path.stem)
