"""The overlay video of a prediction: the input video with, on every frame, the tracked face box
(solid where the face was detected on that frame, dashed where its box is interpolated), a gauge per
target and a running trace of the last seconds, and the input's audio.

Drawn with PIL on the decoded frames; encoded with PyAV as H.264 (libx264, yuv420p) at the input's
frame rate and time base, each frame keeping its timestamp. The audio stream is copied as it is when
the output container holds its codec (Matroska holds any; MP4/MOV the usual ones), else re-encoded
to AAC.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from rja_models.data import DataError, probe_video
from rja_models.inference.faces import FaceTrack

OVERLAY_EXTENSIONS = (".mp4", ".mkv", ".mov")
TRACE_SECONDS = 5.0
# Audio codecs an MP4/MOV file holds as they are (Matroska: any).
_MP4_AUDIO = frozenset({"aac", "mp3", "alac", "ac3", "eac3"})
_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_COLOURS = ((80, 170, 255), (255, 150, 60), (120, 220, 120), (230, 110, 230))  # one per target
_DETECTED = (60, 230, 90)
_INTERPOLATED = (255, 200, 40)


class OverlayPainter:
    """Draws the overlay on frames of one size: face box, a gauge per target, a trace panel.

    Args:
        width, height: the frames' size.
        names: the targets (one gauge and one trace colour each).
        low, high: the targets' range (the gauges' and the trace's scale).
        trace_seconds: how far back the trace reaches.
    """

    def __init__(self, width: int, height: int, names: Sequence[str], low: float = -1.0, high: float = 1.0,
                 trace_seconds: float = TRACE_SECONDS) -> None:
        self.names, self.low, self.high, self.trace_seconds = list(names), low, high, trace_seconds
        self.unit = max(1.0, min(width, height) / 360)  # line widths and text grow with the frame
        u = self.unit
        self.font = ImageFont.load_default(size=round(11 * u))
        pad, row = round(6 * u), round(16 * u)
        panel_h = pad * 2 + row * len(self.names)
        top = height - panel_h - pad
        gauge_w = min(round(0.42 * width), round(220 * u))
        self.gauges = (pad, top, pad + gauge_w, top + panel_h)
        self.trace = (self.gauges[2] + pad, top, width - pad, top + panel_h)
        self.row, self.pad = row, pad

    def _y(self, value: float, y0: float, y1: float) -> float:
        """The height of ``value`` in a panel from y0 (high) to y1 (low)."""
        frac = (np.clip(value, self.low, self.high) - self.low) / (self.high - self.low)
        return y1 - frac * (y1 - y0)

    def _x(self, value: float, x0: float, x1: float) -> float:
        frac = (np.clip(value, self.low, self.high) - self.low) / (self.high - self.low)
        return x0 + frac * (x1 - x0)

    def paint(self, image: Image.Image, values: np.ndarray, trace_times: np.ndarray, trace: np.ndarray,
              box: np.ndarray | None = None, detected: bool = True) -> Image.Image:
        """``image`` (RGB) with the overlay: ``values`` [T] this frame's prediction, ``trace`` [K, T]
        the predictions at ``trace_times`` [K] (seconds relative to this frame, ascending, <= 0),
        ``box`` the face box (x0, y0, x1, y1; None: none drawn), ``detected`` its style."""
        pixels = np.asarray(image).copy()
        for x0, y0, x1, y1 in (self.gauges, self.trace):
            if x1 > x0:  # the panels' background: the frame darkened, so the drawing reads on any video
                pixels[y0:y1, x0:x1] //= 3
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        u = self.unit
        if box is not None:
            width = max(1, round(2 * u))
            if detected:
                draw.rectangle([float(v) for v in box], outline=_DETECTED, width=width)
            else:
                _dashed_rectangle(draw, box, _INTERPOLATED, width, dash=8 * u)
        x0, y0, x1, _ = self.gauges
        text_w = round(80 * u)
        for t, (name, value) in enumerate(zip(self.names, values)):
            colour = _COLOURS[t % len(_COLOURS)]
            top = y0 + self.pad + t * self.row
            draw.text((x0 + self.pad, top), f"{name} {value:+.2f}", fill=colour, font=self.font)
            bar0, bar1 = x0 + self.pad + text_w, x1 - self.pad
            mid = top + self.row / 2
            draw.line([(bar0, mid), (bar1, mid)], fill=(110, 110, 110), width=max(1, round(u)))
            zero = self._x(0.0 if self.low < 0 < self.high else self.low, bar0, bar1)
            at = self._x(float(value), bar0, bar1)
            draw.rectangle([min(zero, at), mid - 4 * u, max(zero, at), mid + 4 * u], fill=colour)
        tx0, ty0, tx1, ty1 = self.trace
        if tx1 - tx0 > 4 * self.pad:
            inner = (tx0 + self.pad, ty0 + self.pad, tx1 - self.pad, ty1 - self.pad)
            if self.low < 0 < self.high:
                zero_y = self._y(0.0, inner[1], inner[3])
                draw.line([(inner[0], zero_y), (inner[2], zero_y)], fill=(110, 110, 110), width=1)
            xs = inner[2] + (np.asarray(trace_times) / self.trace_seconds) * (inner[2] - inner[0])
            for t in range(trace.shape[1] if len(trace) else 0):
                points = [(float(x), float(self._y(v, inner[1], inner[3]))) for x, v in zip(xs, trace[:, t])]
                if len(points) > 1:
                    draw.line(points, fill=_COLOURS[t % len(_COLOURS)], width=max(1, round(1.5 * u)))
            draw.text((inner[0], inner[1]), f"last {self.trace_seconds:g} s", fill=(200, 200, 200), font=self.font)
        return image


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: np.ndarray, colour: tuple[int, int, int], width: int,
                      dash: float) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = float(np.hypot(b[0] - a[0], b[1] - a[1]))
        for s in np.arange(0.0, length, 2 * dash):
            e = min(s + dash, length)
            draw.line([(a[0] + (b[0] - a[0]) * s / length, a[1] + (b[1] - a[1]) * s / length),
                       (a[0] + (b[0] - a[0]) * e / length, a[1] + (b[1] - a[1]) * e / length)],
                      fill=colour, width=width)


class _AudioOut:
    """The input's audio stream into the output: packets copied, or re-encoded to AAC."""

    def __init__(self, dst: av.container.OutputContainer, src: av.audio.stream.AudioStream, suffix: str) -> None:
        self.dst, self.src = dst, src
        self.copy = suffix == ".mkv" or src.codec_context.name in _MP4_AUDIO
        if self.copy:
            self.stream = dst.add_stream_from_template(src)
        else:
            rate = src.rate if src.rate in _AAC_RATES else 48000
            layout = "mono" if src.channels == 1 else "stereo"
            self.stream = dst.add_stream("aac", rate=rate, layout=layout)

    def write(self, packet: av.Packet) -> None:
        if self.copy:
            if packet.dts is not None:  # not the demuxer's empty flush packet
                packet.stream = self.stream
                self.dst.mux(packet)
            return
        for frame in packet.decode():
            self.dst.mux(self.stream.encode(frame))

    def close(self) -> None:
        if not self.copy:
            self.dst.mux(self.stream.encode(None))


def write_overlay(video: str | Path, out: str | Path, times: np.ndarray, pred: np.ndarray, names: Sequence[str], *,
                  low: float = -1.0, high: float = 1.0, track: FaceTrack | None = None,
                  trace_seconds: float = TRACE_SECONDS, progress: bool = False) -> None:
    """Write the overlay video of ``video`` to ``out`` (.mp4, .mkv or .mov): ``pred`` [N, T] the
    prediction of each of its N frames at ``times`` [N] (seconds), ``track`` the face box drawn
    (None: none).

    Raises:
        DataError: the input cannot be decoded.
        ValueError: ``out`` has another extension, or ``pred`` another frame count.
    """
    video, out = Path(video), Path(out)
    if out.suffix.lower() not in OVERLAY_EXTENSIONS:
        raise ValueError(f"{out}: the overlay is written as {', '.join(OVERLAY_EXTENSIONS)}")
    info = probe_video(video)
    if len(pred) != info.num_frames or len(times) != info.num_frames:
        raise ValueError(f"{video} has {info.num_frames} frames, got {len(pred)} predictions, {len(times)} times")
    width, height = info.width // 2 * 2, info.height // 2 * 2  # yuv420p needs an even size
    painter = OverlayPainter(width, height, names, low, high, trace_seconds)
    try:
        with av.open(str(video)) as src, av.open(str(out), "w") as dst:
            vin = src.streams.video[0]
            vin.thread_type = "AUTO"
            vout = dst.add_stream("libx264", rate=vin.average_rate or Fraction(info.fps).limit_denominator(1001))
            vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
            vout.time_base = vin.time_base
            vout.options = {"preset": "veryfast", "crf": "20"}
            audio = _AudioOut(dst, src.streams.audio[0], out.suffix.lower()) if src.streams.audio else None
            index = 0
            with tqdm(total=info.num_frames, desc="overlay", unit="frame", disable=not progress, leave=False) as bar:
                for packet in src.demux(*([vin] + ([audio.src] if audio else []))):
                    if audio is not None and packet.stream is audio.src:
                        audio.write(packet)
                        continue
                    for frame in packet.decode():
                        if index >= info.num_frames or (frame.pts is not None and frame.pts < info.frame_pts[0]):
                            continue  # an edit list's preroll, or past the frames counted
                        lo = int(np.searchsorted(times, times[index] - trace_seconds))
                        image = painter.paint(frame.to_image().crop((0, 0, width, height)), pred[index],
                                              times[lo : index + 1] - times[index], pred[lo : index + 1],
                                              None if track is None else track.boxes[index],
                                              True if track is None else bool(track.detected[index]))
                        drawn = av.VideoFrame.from_image(image)
                        drawn.pts = int(info.frame_pts[index]) if frame.pts is None else frame.pts
                        drawn.time_base = vin.time_base
                        dst.mux(vout.encode(drawn))
                        index += 1
                        bar.update()
            dst.mux(vout.encode(None))
            if audio is not None:
                audio.close()
    except av.error.FFmpegError as e:
        raise DataError(video, f"cannot write its overlay video {out} ({e})") from e
