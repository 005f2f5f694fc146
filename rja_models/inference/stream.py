"""Live inference on a stream: incremental decoding, the sliding window, a causal scheduler that
drops whole windows when inference falls behind, and latency accounting.

A reader thread decodes the source (anything FFmpeg opens: a device, a URL, a pipe, a file paced at
its own rate) into frames stamped with their arrival time and into mono audio samples placed on the
stream's timeline. Window ``k`` holds frames ``k * stride .. k * stride + W - 1`` (``W`` = clips x
clip span); it is ready when its last frame and the audio of its last clip have arrived, never
later (no look-ahead past the window). The worker (the caller's thread) turns a ready window into
the model's input exactly as `VideoFileDataset` does for a file (`rja_models.data.clip_input`),
runs `predict_windows`, turns the window's clip values into per-frame values (`frame_predictions`,
on this window alone) and hands the rows of the frames no earlier window gave a row to the writer.

Drop when behind: when window ``k + 1`` is complete (or, at the end of the stream, begun) while
the worker has not yet taken the ready window ``k``, window ``k`` is dropped (counted, said on
stderr), so a ready window waits at most for the inference in flight, and a row is never later
than its window's filling plus two inference times. With ``drop=False`` the reader waits instead (for a
recorded stream on a pipe, which would otherwise be read faster than it can be predicted).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import av
import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from rja_models.cli import UsageError
from rja_models.data.clip_input import clip_spans, model_audio_window, shown_frames, window_item
from rja_models.data.video import AudioWindow, _nominal_fps
from rja_models.data.windows import Windowing
from rja_models.inference.windows import frame_predictions
from rja_models.training.evaluation import predict_windows

# How far (stream seconds) the video may run past the end of a window's audio before the window goes
# without the rest of it (zeros): a live audio track that stalls must not stall the video.
AUDIO_SLACK_S = 0.5
_POLL_S = 0.1  # how often waiting threads look at the stop flag (a signal handler cannot notify them)


def open_source(source: str, input_format: str | None = None, options: dict[str, str] | None = None
                ) -> av.container.InputContainer:
    """The container of ``source`` ("-": standard input); `UsageError` when FFmpeg cannot open it."""
    target: Any = sys.stdin.buffer if source == "-" else source
    try:
        container = av.open(target, format=input_format, options=options or {})
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise UsageError(f"{'standard input' if source == '-' else source}: cannot open it as a stream "
                         f"({e})") from None
    if not container.streams.video:
        container.close()
        raise UsageError(f"{source}: has no video stream")
    return container


class AudioTimeline:
    """Mono samples on the stream's sample grid (sample ``k`` at ``k / sample_rate`` seconds), each
    chunk placed at its timestamp, a chunk without one right after the previous (as
    `VideoReader.read_audio` places them); samples never received read as zeros."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.end = 0  # past the last sample placed
        self._base = 0  # sample index of _data[0]
        self._data = np.zeros(0, np.float32)
        self._cursor: int | None = None

    def place(self, chunk: av.AudioFrame) -> None:
        """Add one resampled (flt, mono, sample_rate) chunk."""
        if chunk.pts is not None:
            self._cursor = round(float(chunk.pts * chunk.time_base) * self.sample_rate)
        data = chunk.to_ndarray().reshape(-1)
        start = 0 if self._cursor is None else self._cursor
        stop = start + len(data)
        self._cursor = stop
        if stop > self._base + len(self._data):
            self._data = np.concatenate([self._data, np.zeros(stop - self._base - len(self._data), np.float32)])
        lo = max(start, self._base)
        if lo < stop:
            self._data[lo - self._base : stop - self._base] = data[lo - start :]
        self.end = max(self.end, stop)

    def cut(self, start: int, count: int) -> np.ndarray:
        """float32 [count]: samples ``start .. start + count - 1``."""
        out = np.zeros(count, np.float32)
        lo, hi = max(start, self._base), min(start + count, self._base + len(self._data))
        if lo < hi:
            out[lo - start : hi - start] = self._data[lo - self._base : hi - self._base]
        return out

    def discard_before(self, index: int) -> None:
        """Forget the samples before ``index`` (no window needs them any more)."""
        if index > self._base:
            self._data = self._data[min(index - self._base, len(self._data)) :]
            self._base = index


@dataclass
class Frame:
    """A decoded video frame: its index in the stream, timestamp (s), arrival (`time.monotonic()`)."""

    index: int
    time: float
    arrival: float
    image: av.VideoFrame


@dataclass
class Window:
    """A window to predict: ``frames`` from ``start`` on (fewer than W only for the last one, at the
    end of the stream), each clip's ``audio`` float32 [L, S], rows due from frame ``first_row`` on,
    and when it became ready to take (``time.monotonic()``)."""

    start: int
    frames: list[Frame]
    audio: np.ndarray
    first_row: int
    ready: float


@dataclass
class LiveStats:
    """What a run did and how late its rows were (`summary`)."""

    frames_in: int = 0
    rows_out: int = 0
    windows_run: int = 0
    windows_dropped: int = 0
    interrupted: bool = False
    first_arrival: float | None = None
    last_row: float | None = None
    latencies: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    fills: list[float] = field(default_factory=list)  # per run window: its first frame's arrival to ready
    waits: list[float] = field(default_factory=list)  # per run window: ready to its inference

    def summary(self) -> dict[str, Any]:
        """Frames per second sustained (rows written per second of the run), latency median/p95/max
        from a frame's arrival to its row being written (ms), windows run and dropped, and the parts of
        a row's latency (s, the most over the windows run): its window filling until ready, waiting for
        the worker, the inference (with writing the rows)."""
        span = self.last_row - self.first_arrival if self.last_row is not None and self.first_arrival else 0.0
        lat = np.asarray(self.latencies) * 1000.0

        def pct(q: float) -> float | None:
            return round(float(np.percentile(lat, q)), 1) if len(lat) else None

        return {"frames_in": self.frames_in, "rows_out": self.rows_out, "windows_run": self.windows_run,
                "windows_dropped": self.windows_dropped,
                "fps_sustained": round(self.rows_out / span, 2) if span else None,
                "latency_ms_median": pct(50), "latency_ms_p95": pct(95), "latency_ms_max": pct(100),
                "inference_s_median": round(float(np.median(self.inference)), 3) if self.inference else None,
                "inference_s_max": round(max(self.inference), 3) if self.inference else None,
                "fill_s_max": round(max(self.fills), 3) if self.fills else None,
                "wait_s_max": round(max(self.waits), 3) if self.waits else None,
                "interrupted": self.interrupted}


class WindowScheduler:
    """The sliding window between the reader thread (`add_frame`, `add_audio`, `finish`) and the worker
    (`next_window`); see the module docstring for when a window is ready and when it is dropped."""

    def __init__(self, windowing: Windowing, stride: int, *, config: Any, extra: dict[str, Any] | None,
                 stream: av.video.stream.VideoStream, audio: bool, drop: bool, stats: LiveStats,
                 say: Callable[[str], None]) -> None:
        self.windowing, self.stride, self.drop, self.stats, self.say = windowing, stride, drop, stats, say
        self._config, self._extra, self._stream = config, extra, stream
        self.timeline = AudioTimeline(config.sample_rate) if audio else None
        self.audio_window: AudioWindow | None = None  # known once the first window's frames give the rate
        self.fps: float | None = None
        self._cond = threading.Condition()
        self._frames: dict[int, Frame] = {}
        self._next = 0  # the oldest window neither taken nor dropped
        self._rows_from = 0  # frames before this have had their row (or never will)
        self._audio_done = not audio
        self._busy = False  # the worker is predicting a window
        self._ready_since: float | None = None  # when window _next became ready (or the stream ended)
        self._ended: float | None = None  # when the stream ended
        self.eof = False
        self.error: BaseException | None = None

    # -- reader side --
    def add_frame(self, frame: Frame, stop: threading.Event) -> None:
        """Add the next frame; drop (or, without ``drop``, wait for) a ready window the worker has not taken."""
        with self._cond:
            self._frames[frame.index] = frame
            self.stats.frames_in = frame.index + 1
            if self.stats.first_arrival is None:
                self.stats.first_arrival = frame.arrival
            if self.audio_window is None and frame.index + 1 >= self.windowing.length:
                self._set_rate(self.windowing.length)
            self._note_ready()
            # Behind: the worker is busy, the window it would take next is ready and the one after complete.
            while self._busy and self._ready(self._next) and self._complete(self._next + 1) and not stop.is_set():
                if self.drop:
                    self._drop_next()
                else:
                    self._cond.wait(_POLL_S)
            self._cond.notify_all()

    def add_audio(self, chunk: av.AudioFrame) -> None:
        """Add one resampled audio chunk."""
        with self._cond:
            self.timeline.place(chunk)
            self._note_ready()
            self._cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        """The stream ended (``error``: it broke)."""
        with self._cond:
            self.eof, self._audio_done, self.error = True, True, error
            self._ended = time.monotonic()
            # Behind at the end as in add_frame: the last, partial window is due while a ready one waits.
            begun = self.stats.frames_in > self._start(self._next + 1)
            if self.drop and self._busy and self._ready(self._next) and begun:
                self._drop_next()
            if self._ready_since is None:  # the last, partial window can be taken from now on
                self._ready_since = self._ended
            self._cond.notify_all()

    # -- worker side --
    def next_window(self, stop: threading.Event) -> Window | None:
        """The next ready window, the padded last one at the end of the stream, or None when done."""
        with self._cond:
            self._busy = False
            while not stop.is_set():
                if self._ready(self._next):
                    window = self._window(self._start(self._next), self.windowing.length)
                    self._advance(self._next + 1)
                elif self.eof:
                    # The last, partial window: padded as `VideoFileDataset` pads the end of a file.
                    start, known = self._start(self._next), self.stats.frames_in
                    if known <= max(start, self._rows_from):
                        return None
                    if self.audio_window is None:  # a stream shorter than one window
                        self._set_rate(known)
                    window = self._window(start, known - start)
                else:
                    self._cond.wait(_POLL_S)
                    continue
                self._busy = True
                self._cond.notify_all()
                return window
            return None

    # -- internals (under the lock) --
    def _note_ready(self) -> None:
        if self._ready_since is None and self._ready(self._next):
            self._ready_since = time.monotonic()

    def _drop_next(self) -> None:
        start = self._start(self._next)
        self.stats.windows_dropped += 1
        self.say(f"inference behind: dropped the window of frames {start}-{start + self.windowing.length - 1}")
        self._advance(self._next + 1)
        self._note_ready()

    def _set_rate(self, count: int) -> None:
        """The nominal frame rate from the first ``count`` frames, and with it the clip audio window."""
        times = np.array([self._frames[i].time for i in range(count)])
        self.fps = _nominal_fps(self._stream, times)
        self.audio_window = model_audio_window(self._config, self._extra, self.fps)

    def _start(self, k: int) -> int:
        return k * self.stride

    def _complete(self, k: int) -> bool:
        return self.stats.frames_in >= self._start(k) + self.windowing.length

    def _ready(self, k: int) -> bool:
        if not self._complete(k) or self.audio_window is None:
            return False
        if self._audio_done:
            return True
        starts, samples = self._audio_starts(self._start(k), self.stats.frames_in)
        needed = max(starts) + samples
        newest = self._frames[self.stats.frames_in - 1].time
        return self.timeline.end >= needed or newest >= needed / self.timeline.sample_rate + AUDIO_SLACK_S

    def _frame_time(self, index: int, known: int) -> float:
        # Past the last frame (padding of the last window): extrapolated at the nominal rate, as
        # `VideoInfo.frame_time` does for a file.
        if index < known:
            return self._frames[index].time
        return self._frames[known - 1].time + (index - known + 1) / self.fps

    def _audio_starts(self, start: int, known: int) -> tuple[list[int], int]:
        """Each clip's first sample index and the samples per clip."""
        firsts, lasts = clip_spans(self.windowing, start)
        times = [self.audio_window.start_time(self._frame_time(int(a), known), self._frame_time(int(b), known))
                 for a, b in zip(firsts, lasts)]
        return [round(t * self.audio_window.sample_rate) for t in times], self.audio_window.samples

    def _window(self, start: int, count: int) -> Window:
        known = start + count
        starts, samples = self._audio_starts(start, known)
        if self.timeline is None:
            audio = np.zeros((len(starts), samples), np.float32)
        else:
            audio = np.stack([self.timeline.cut(s, samples) for s in starts])
        frames = [self._frames[i] for i in range(start, known)]
        first_row = max(start, self._rows_from)
        self._rows_from = known
        self.stats.windows_run += 1
        ready = time.monotonic() if self._ready_since is None else self._ready_since
        return Window(start, frames, audio, first_row, ready)

    def _advance(self, k: int) -> None:
        self._next = k
        self._ready_since = self._ended  # after the end every window left can be taken
        keep = self._start(k)
        for index in [i for i in self._frames if i < keep]:
            del self._frames[index]
        if self.timeline is not None and self._frames:
            # Keep the audio any clip of the next window can start at (an "end" anchor reaches back).
            earliest = min(f.time for f in self._frames.values()) - self.audio_window.seconds - 1.0
            self.timeline.discard_before(math.floor(earliest * self.timeline.sample_rate))


class SourceReader(threading.Thread):
    """Decodes the container into the scheduler; ``realtime`` paces the frames at their timestamps
    (a file played as a live source). Closes the container when done."""

    def __init__(self, container: av.container.InputContainer, scheduler: WindowScheduler, stop: threading.Event,
                 *, realtime: bool, say: Callable[[str], None]) -> None:
        super().__init__(name="rja-live-reader", daemon=True)  # a read blocked on a dead pipe must not hang exit
        self.container, self.scheduler, self.stop, self.realtime, self.say = container, scheduler, stop, realtime, say

    def run(self) -> None:
        video = self.container.streams.video[0]
        streams = [video]
        resampler = None
        if self.scheduler.timeline is not None:
            streams.append(self.container.streams.audio[0])
            resampler = av.AudioResampler(format="flt", layout="mono", rate=self.scheduler.timeline.sample_rate)
        error = None
        index, clock = 0, None  # clock: (wall, stream time) of the first frame, for --realtime
        bad_packets = 0
        try:
            for packet in self.container.demux(*streams):
                if self.stop.is_set():
                    break
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:  # a damaged packet of a live stream: skip it, go on
                    bad_packets += 1
                    if bad_packets == 1:
                        self.say("skipping undecodable packets of the stream")
                    continue
                for frame in decoded:
                    if isinstance(frame, av.AudioFrame):
                        for chunk in resampler.resample(frame):
                            self.scheduler.add_audio(chunk)
                        continue
                    # The timestamps as `probe_video` computes them, so rows match `predict`'s.
                    t = frame.pts * float(video.time_base) if frame.pts is not None else index / float(
                        video.average_rate or 25)
                    if self.realtime:
                        clock = clock or (time.monotonic(), t)
                        self.stop.wait(max(0.0, clock[0] + (t - clock[1]) - time.monotonic()))
                    self.scheduler.add_frame(Frame(index, t, time.monotonic(), frame), self.stop)
                    index += 1
            if resampler is not None and not self.stop.is_set():
                for chunk in resampler.resample(None):
                    self.scheduler.add_audio(chunk)
        except av.error.FFmpegError as e:
            error = e
        finally:
            self.container.close()
            self.scheduler.finish(error)


Prepare = Callable[[av.VideoFrame], tuple[np.ndarray, bool | None]]
"""A decoded frame -> (uint8 [size, size, 3] model image, face found: None without face detection)."""


def predict_window(model: nn.Module, device: torch.device, windowing: Windowing, window: Window,
                   prepare: Prepare, num_targets: int) -> tuple[np.ndarray, np.ndarray, list[bool | None]]:
    """(frame index int64 [R], values float32 [R, T], face found per row) of the window's due frames:
    the model run on the input `VideoFileDataset` makes of the same frames of a file, and the window's
    clip values as a per-frame curve (`frame_predictions` over this window alone: causal, so frames
    before its first / after its last clip centre hold that clip's value, where `predict` interpolates
    towards the neighbouring window)."""
    known = window.start + len(window.frames)
    prepared = [prepare(f.image) for f in window.frames]  # every frame, in order: a face tracker sees each
    shown = shown_frames(windowing, window.start, known)
    images = np.stack([prepared[i - window.start][0] for i in shown.reshape(-1)])
    item = window_item(windowing, window.start, shown, images, window.audio, num_targets=num_targets, name="live")
    record = predict_windows(model, [default_collate([item])], device)[0]
    local = {**record, "frames": record["frames"] - window.start}  # index the window's own frame times
    values = frame_predictions([local], np.array([f.time for f in window.frames]))
    due = np.arange(window.first_row - window.start, len(window.frames))
    return due + window.start, values[due], [prepared[i][1] for i in due]


class RowWriter:
    """Rows as CSV (header first, as `predict`'s plus a face column) or JSON lines, written and
    flushed once per window, so a reader sees them at once and an interrupted run leaves whole rows."""

    def __init__(self, out: IO[str], names: list[str], kind: str = "csv") -> None:
        self.out, self.names, self.kind = out, names, kind
        if kind == "csv":
            self._emit([["frame", "timestamp", *names, "face"]])

    def write(self, frames: np.ndarray, times: list[float], pred: np.ndarray, faces: list[bool | None]) -> None:
        """Write and flush one window's rows (face: 1/0, empty without face detection)."""
        if self.kind == "csv":
            self._emit([[int(i), f"{t:.6f}", *(f"{v:.6f}" for v in row), "" if face is None else int(face)]
                        for i, t, row, face in zip(frames, times, pred, faces)])
            return
        self._emit([{"frame": int(i), "timestamp": round(t, 6),
                     **{n: round(float(v), 6) for n, v in zip(self.names, row)}, "face": face}
                    for i, t, row, face in zip(frames, times, pred, faces)])

    def _emit(self, rows: list[Any]) -> None:
        buffer = io.StringIO()
        if self.kind == "csv":
            csv.writer(buffer).writerows(rows)
        else:
            buffer.writelines(json.dumps(row) + "\n" for row in rows)
        self.out.write(buffer.getvalue())  # one write: the signal handler only sets a flag, so never half a row
        self.out.flush()


def run_stream(scheduler: WindowScheduler, reader: SourceReader, stop: threading.Event,
               predict: Callable[[Window], tuple[np.ndarray, np.ndarray, list[bool | None]]], writer: RowWriter,
               stats: LiveStats) -> None:
    """Predict every window the scheduler gives until the stream ends or ``stop`` is set; raises
    `UsageError` when the stream broke (after writing what came before)."""
    reader.start()
    try:
        while (window := scheduler.next_window(stop)) is not None:
            began = time.monotonic()
            frames, pred, faces = predict(window)
            times = [window.frames[int(i) - window.start].time for i in frames]
            try:
                writer.write(frames, times, pred, faces)
            except BrokenPipeError:  # the consumer of stdout went away: nothing more to do
                stop.set()
                break
            now = time.monotonic()
            stats.inference.append(now - began)
            stats.fills.append(window.ready - window.frames[0].arrival)
            stats.waits.append(began - window.ready)
            stats.latencies.extend(now - window.frames[int(i) - window.start].arrival for i in frames)
            stats.rows_out += len(frames)
            stats.last_row = now
    finally:
        stats.interrupted = stop.is_set()
        stop.set()
        reader.join(timeout=2.0)
    if scheduler.error is not None:
        raise UsageError(f"the stream broke after {stats.frames_in} frames ({scheduler.error})")
