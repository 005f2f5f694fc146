"""Streaming decoding of audio-visual files with PyAV, and cutting them into aligned A-V clips.

Every time here is a presentation time in seconds on the container's timeline (``pts * time_base``),
shared by the video and the audio stream. A clip is anchored on the timestamp of its first frame, so
non-integer frame rates (29.97) and dropped frames do not make audio and video drift apart.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from .errors import DataError

# Audio codecs such as AAC decode a frame correctly only after its predecessor: start decoding this
# much before the wanted time after a seek.
_AUDIO_PREROLL_S = 0.25


@dataclass(frozen=True)
class VideoInfo:
    """What a scan of a file's packets tells (no frame is decoded)."""

    path: Path
    num_frames: int
    fps: float
    """Nominal frame rate: the container's average rate, or 1 / median frame interval when frames
    were dropped (the average rate then undercounts)."""
    timestamps: np.ndarray
    """float64 [num_frames]: presentation time of each frame, in presentation order."""
    frame_pts: np.ndarray
    """int64 [num_frames]: the same times in the video stream's time base (used to find frames)."""
    width: int
    height: int
    has_audio: bool

    def frame_time(self, index: int) -> float:
        """Time of frame ``index``; before the first or past the last frame (padding), extrapolated at
        the nominal rate: frame ``num_frames`` is one frame interval after the last one."""
        if index < 0:
            return float(self.timestamps[0]) + index / self.fps
        if index < self.num_frames:
            return float(self.timestamps[index])
        return float(self.timestamps[-1]) + (index - self.num_frames + 1) / self.fps


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise DataError(path, f"unreadable or truncated video file, cannot open it ({e})") from e


def _nominal_fps(stream: av.video.stream.VideoStream, timestamps: np.ndarray) -> float:
    average = float(stream.average_rate) if stream.average_rate else 0.0
    if len(timestamps) < 2:
        return average or 25.0
    median_rate = 1.0 / float(np.median(np.diff(timestamps)))
    # Keep the exact container rate (30000/1001) unless dropped frames made it disagree.
    if average and abs(average - median_rate) <= 0.01 * median_rate:
        return average
    return median_rate


_INFO_CACHE: dict[tuple[str, int, int], VideoInfo] = {}


def probe_video(path: str | Path) -> VideoInfo:
    """Scan a video file's packets for its frame count, timestamps and streams.

    Cached per process by (path, size, mtime), since datasets ask for the same file often
    (e.g. the ``_left``/``_right`` videos of Aff-Wild2 share one file).

    Raises:
        DataError: the file cannot be opened, has no video stream, or holds fewer frames than its
            header announces (truncated).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(path, f"unreadable or truncated video file, cannot open it ({e})") from e
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _INFO_CACHE:
        return _INFO_CACHE[key]
    with _open(path) as container:
        if not container.streams.video:
            raise DataError(path, "has no video stream (unreadable, truncated or not a video file)")
        stream = container.streams.video[0]
        pts = []
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if packet.size and stamp is not None and not packet.is_discard:
                    pts.append(stamp)
        except av.error.FFmpegError as e:
            raise DataError(path, f"unreadable or truncated video ({e})") from e
        if not pts:
            raise DataError(path, "has no video frames")
        if stream.frames and len(pts) < stream.frames:
            raise DataError(path, f"truncated video: {len(pts)} of {stream.frames} frames present")
        frame_pts = np.sort(np.asarray(pts, dtype=np.int64))
        timestamps = frame_pts.astype(np.float64) * float(stream.time_base)
        info = VideoInfo(
            path=path,
            num_frames=len(frame_pts),
            fps=_nominal_fps(stream, timestamps),
            timestamps=timestamps,
            frame_pts=frame_pts,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            has_audio=bool(container.streams.audio),
        )
    _INFO_CACHE[key] = info
    return info


def video_frame_timestamps(path: str | Path) -> torch.Tensor:
    """float64 [num_frames]: presentation time in seconds of every frame of a video file."""
    return torch.from_numpy(probe_video(path).timestamps.copy())


def clip_audio_samples(clip_frames: int, fps: float, sample_rate: int) -> int:
    """Samples of audio in ``clip_frames`` frames' time: ``round(clip_frames / fps * sample_rate)``."""
    return round(clip_frames / fps * sample_rate)


AUDIO_ANCHORS = ("start", "end")


@dataclass(frozen=True)
class AudioWindow:
    """The audio that goes with a clip: ``seconds`` of it at ``sample_rate``, starting at the time of
    the clip's first frame (``anchor="start"``) or ending at the time of its last frame (``"end"``,
    the authors' per-clip files, cut from the audio track by the video's timestamps).

    A duration, not a count of frames: a clip gets the same span of time at any frame rate, and the
    same moment of a 15 fps and a 29.97 fps copy of a video gets the same samples.
    """

    seconds: float
    sample_rate: int = 16000
    anchor: str = "start"

    def __post_init__(self) -> None:
        if not self.seconds > 0 or self.sample_rate < 1:
            raise ValueError(f"an audio window needs seconds > 0 and sample_rate >= 1, got {self}")
        if self.anchor not in AUDIO_ANCHORS:
            raise ValueError(f"anchor must be one of {AUDIO_ANCHORS}, got {self.anchor!r}")

    @property
    def samples(self) -> int:
        """Samples per clip (``S``)."""
        return max(1, round(self.seconds * self.sample_rate))

    def start_time(self, first: float, last: float) -> float:
        """Time of the first sample for a clip whose first and last frames are at ``first`` and ``last``,
        on the sample grid: a clip's samples are then the same whichever read they are cut from."""
        start = first if self.anchor == "start" else last - self.samples / self.sample_rate
        return round(start * self.sample_rate) / self.sample_rate

    @classmethod
    def for_clips(cls, seconds: float | None, samples: int | None, sample_rate: int, anchor: str, fps: float,
                  span: int) -> AudioWindow:
        """``seconds`` of audio per clip, else ``samples`` at ``sample_rate``, else one clip span of
        ``span`` frames at ``fps``."""
        if not seconds:
            seconds = (samples or clip_audio_samples(span, fps, sample_rate)) / sample_rate
        return cls(seconds, sample_rate, anchor)

    @classmethod
    def from_config(cls, config: object, extra: dict | None = None) -> AudioWindow | None:
        """The window a ``ModelConfig`` was trained with: its ``audio_seconds`` and ``audio_anchor``;
        for a checkpoint from before those existed, its ``extra["data"]["audio_samples"]`` at the
        config's sample rate. None when neither says (the dataset then takes one clip span at the
        data's usual frame rate)."""
        seconds = float(getattr(config, "audio_seconds", 0.0) or 0.0)
        samples = ((extra or {}).get("data") or {}).get("audio_samples")
        if not seconds and samples:
            seconds = samples / config.sample_rate
        if not seconds:
            return None
        return cls(seconds, config.sample_rate, getattr(config, "audio_anchor", "start"))


def fit_image(image: Image.Image, size: int | None) -> np.ndarray:
    """uint8 [size, size, 3]: resize the shorter side to ``size`` and center-crop (None: unchanged)."""
    image = image.convert("RGB")
    if size is None:
        return np.asarray(image)
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def to_clips(frames: np.ndarray, clips: int, clip_frames: int) -> torch.Tensor:
    """uint8 [L*F, H, W, 3] -> float32 [L, 3, F, H, W] in [0, 1] (channels-first clips, as r3d_18 expects)."""
    x = torch.from_numpy(np.ascontiguousarray(frames))
    _, h, w, _ = x.shape
    return x.view(clips, clip_frames, h, w, 3).permute(0, 4, 1, 2, 3).float().div_(255.0)


def require_audio(info: VideoInfo) -> None:
    """Raise a DataError when the file has no audio stream, pointing at the visual-only option."""
    if not info.has_audio:
        raise DataError(
            info.path, "has no audio stream; pass visual_only=True to use the video alone (audio is then zeros)"
        )


class VideoReader:
    """Random access to the frames and the audio of one file, decoding only what is asked for.

    Each read seeks (to the keyframe before the wanted frame, or shortly before the wanted audio
    time) and decodes packet by packet, so a long video is never held in memory.

    Args:
        path: any container/codec FFmpeg reads.
        sample_rate: the audio is resampled to this rate, mono.
        image_size: frames are resized (shorter side) and center-cropped to this square; None keeps them.
    """

    def __init__(self, path: str | Path, *, sample_rate: int = 16000, image_size: int | None = 112) -> None:
        self.path = Path(path)
        self.info = probe_video(self.path)
        self.sample_rate = sample_rate
        self.image_size = image_size
        self._container = _open(self.path)

    def close(self) -> None:
        """Close the underlying file."""
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decode(self, stream: av.stream.Stream, seek_pts: int) -> Iterator[av.frame.Frame]:
        try:
            self._container.seek(seek_pts, stream=stream, backward=True)
            for packet in self._container.demux(stream):
                yield from packet.decode()
        except av.error.FFmpegError as e:
            raise DataError(self.path, f"unreadable or truncated video ({e})") from e

    def iter_frames(self, start: int = 0, count: int | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Yield ``(timestamp, uint8 [H, W, 3] image)`` for frames ``start .. start+count-1``.

        Raises:
            DataError: a frame cannot be decoded or the file ends early (truncated).
        """
        info = self.info
        stop = info.num_frames if count is None else min(start + count, info.num_frames)
        if start >= stop:
            return
        stream = self._container.streams.video[0]
        target = int(info.frame_pts[start])
        # The demuxer's seek index may land on a keyframe after the target (it compares decode
        # timestamps); step back until the first decoded frame is not past the target.
        step = max(1, round(1.0 / float(stream.time_base)))
        seek = target
        while True:
            frames = self._decode(stream, seek)
            first = next(frames, None)
            if first is not None and (first.pts is None or first.pts <= target or seek <= info.frame_pts[0]):
                break
            seek, step = seek - step, step * 2
        index = start
        for frame in itertools.chain([first] if first is not None else [], frames):
            if frame.pts is not None and frame.pts < target:
                continue
            time = float(frame.pts * frame.time_base) if frame.pts is not None else info.frame_time(index)
            yield time, fit_image(frame.to_image(), self.image_size)
            index += 1
            if index >= stop:
                return
        raise DataError(self.path, f"truncated video: decoding stopped at frame {index} of {info.num_frames}")

    def read_audio(self, t_start: float, num_samples: int) -> np.ndarray:
        """float32 [num_samples]: mono audio at ``sample_rate`` from time ``t_start``.

        Sample ``k`` is the audio at ``t_start + k / sample_rate``; outside the audio track it is 0.

        Raises:
            DataError: no audio stream, or the audio cannot be decoded.
        """
        require_audio(self.info)
        out = np.zeros(num_samples, dtype=np.float32)
        if num_samples <= 0:
            return out
        stream = self._container.streams.audio[0]
        sr = self.sample_rate
        seek_pts = int(max(0.0, t_start - _AUDIO_PREROLL_S) / float(stream.time_base))
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        cursor: int | None = None  # index in `out` of the next resampled sample

        def place(chunks: list[av.AudioFrame]) -> None:
            nonlocal cursor
            for chunk in chunks:
                if chunk.pts is not None:
                    cursor = round((float(chunk.pts * chunk.time_base) - t_start) * sr)
                assert cursor is not None
                data = chunk.to_ndarray().reshape(-1)
                lo, hi = max(cursor, 0), min(cursor + len(data), num_samples)
                if lo < hi:
                    out[lo:hi] = data[lo - cursor : hi - cursor]
                cursor += len(data)

        for frame in self._decode(stream, seek_pts):
            if cursor is None and frame.pts is None:
                cursor = 0  # no timestamps at all: assume the track starts at t_start
            place(resampler.resample(frame))
            if cursor is not None and cursor >= num_samples:
                break
        else:
            place(resampler.resample(None))
        return out

    def read_clip_audio(self, starts: Sequence[float], samples: int) -> np.ndarray:
        """float32 [len(starts), samples]: row ``l`` is the audio from time ``starts[l]`` on (one
        decode for all rows; zeros only outside the audio track)."""
        t0 = min(starts)
        offsets = [round((t - t0) * self.sample_rate) for t in starts]
        buffer = self.read_audio(t0, max(offsets) + samples)
        return np.stack([buffer[offset : offset + samples] for offset in offsets]).astype(np.float32, copy=False)

    def clip_audio(self, first_frames: Sequence[int], last_frames: Sequence[int], window: AudioWindow) -> np.ndarray:
        """float32 [L, window.samples]: the audio of each clip, whose span runs from frame
        ``first_frames[l]`` to ``last_frames[l]`` (indices may lie outside the video: their times are
        extrapolated, see `VideoInfo.frame_time`). The one place clips get their audio, for
        training, evaluation and prediction alike.

        Raises:
            DataError: no audio stream, or the audio cannot be decoded.
            ValueError: the window's sample rate is not this reader's.
        """
        if window.sample_rate != self.sample_rate:
            raise ValueError(f"audio window at {window.sample_rate} Hz, reader at {self.sample_rate} Hz")
        info = self.info
        starts = [window.start_time(info.frame_time(int(a)), info.frame_time(int(b)))
                  for a, b in zip(first_frames, last_frames)]
        return self.read_clip_audio(starts, window.samples)

    def read_clips(
        self,
        start_frame: int = 0,
        *,
        clips: int = 8,
        clip_frames: int = 8,
        audio_samples: int | None = None,
        visual_only: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Read a sub-sequence of ``clips`` non-overlapping clips of ``clip_frames`` frames.

        Returns a dict with ``"frames"`` float32 [L, 3, F, H, W] in [0, 1]; ``"audio"`` float32
        [L, S] (clip ``l``: ``S = audio_samples`` samples from its first frame's timestamp on, default
        ``round(F / fps * sample_rate)``, the clip's duration; zeros when ``visual_only``); ``"timestamps"``
        float64 [L*F]; ``"valid"`` bool [L*F], False for padding past the end of the video (padded
        frames repeat the last frame).
        """
        info = self.info
        total = clips * clip_frames
        if audio_samples is None:
            audio_samples = clip_audio_samples(clip_frames, info.fps, self.sample_rate)
        images = [image for _, image in self.iter_frames(start_frame, total)]
        if not images:
            raise DataError(self.path, f"start frame {start_frame} is past the last frame ({info.num_frames})")
        valid = torch.zeros(total, dtype=torch.bool)
        valid[: len(images)] = True
        images += [images[-1]] * (total - len(images))
        times = [info.frame_time(start_frame + i) for i in range(total)]
        if visual_only:
            audio = torch.zeros(clips, audio_samples)
        else:
            firsts = [start_frame + c * clip_frames for c in range(clips)]
            window = AudioWindow(audio_samples / self.sample_rate, self.sample_rate)
            audio = torch.from_numpy(self.clip_audio(firsts, [f + clip_frames - 1 for f in firsts], window))
        return {
            "frames": to_clips(np.stack(images), clips, clip_frames),
            "audio": audio,
            "timestamps": torch.tensor(times, dtype=torch.float64),
            "valid": valid,
        }


def read_video_clips(
    path: str | Path,
    *,
    clip_frames: int = 8,
    clips: int = 8,
    start_frame: int = 0,
    sample_rate: int = 16000,
    image_size: int | None = 112,
    audio_samples: int | None = None,
    visual_only: bool = False,
) -> dict[str, torch.Tensor]:
    """Read one sub-sequence of ``clips`` clips of ``clip_frames`` frames from a video file.

    See :meth:`VideoReader.read_clips` for the returned dict.
    """
    with VideoReader(path, sample_rate=sample_rate, image_size=image_size) as reader:
        return reader.read_clips(
            start_frame, clips=clips, clip_frames=clip_frames, audio_samples=audio_samples, visual_only=visual_only
        )
