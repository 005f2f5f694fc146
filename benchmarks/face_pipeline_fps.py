"""Frames per second of the face pipeline, and how that compares with real time.

    python benchmarks/face_pipeline_fps.py                        # a generated 640x480 30 fps clip, 15 s
    python benchmarks/face_pipeline_fps.py VIDEO --detect-every 1 --detect-width 480

Without VIDEO, a clip of matplotlib's sample photograph (grace_hopper.jpg) moving and scaling over a
flat 640x480 background is encoded first (not timed). Timed, each from the file:

* decode: decoding alone (PyAV, RGB frames), the floor of the rest;
* track: `track_video_file` (decode + detection every --detect-every frames + landmarks), pass 1;
* crops: `aligned_crops` (decode + alignment), pass 2; offline = track + crops (what prepare and
  predict run, JPEG writing aside);
* stream: decode + `FaceStream.update` per frame (the live mode's per-frame work).

Each line gives frames per second and the speed against real time (fps / the clip's frame rate; > 1 keeps
up). The load average is printed too: on a shared machine the figures are lower bounds.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from rja_models.data import probe_video, write_av_file
from rja_models.inference.faces import (
    DEFAULT_DETECT_EVERY,
    DEFAULT_DETECT_WIDTH,
    FacePipeline,
    aligned_crops,
    decode_frames,
    track_video_file,
)


def moving_photo_clip(path: Path, seconds: float, fps: float = 30.0, size: tuple[int, int] = (640, 480)) -> Path:
    """Encode the photo's head and shoulders drifting around a flat background, growing and shrinking
    (a face of ~150 to ~215 px)."""
    with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg") as photo:
        patch = photo.convert("RGB").crop((96, 72, 440, 420))

    def frames():
        for i in range(round(seconds * fps)):
            t = i / fps
            scale = 0.85 + 0.15 * math.sin(2 * math.pi * t / 7)
            frame = Image.new("RGB", size, (70, 90, 80))
            x = round(150 + 130 * math.sin(2 * math.pi * t / 5))
            y = round(40 + 30 * math.sin(2 * math.pi * t / 3))
            frame.paste(patch.resize((round(patch.width * scale), round(patch.height * scale)), Image.BILINEAR), (x, y))
            yield np.asarray(frame)

    write_av_file(path, frames(), fps=fps)
    return path


def timed(run: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    frames = run()
    return frames, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", type=Path, help="a video file (default: a generated clip)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the generated clip (default 15)")
    parser.add_argument("--detect-every", type=int, default=DEFAULT_DETECT_EVERY)
    parser.add_argument("--detect-width", type=int, default=DEFAULT_DETECT_WIDTH)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.video or moving_photo_clip(Path(tmp) / "moving.mp4", args.seconds)
        info = probe_video(path)
        pipeline = FacePipeline(detect_every=args.detect_every, detect_width=args.detect_width)
        print(f"{path.name}: {info.width}x{info.height}, {info.num_frames} frames at {info.fps:.2f} fps; "
              f"detect every {args.detect_every} frames at width {args.detect_width}; "
              f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        track = None

        def run_track() -> int:
            nonlocal track
            track = track_video_file(path, pipeline)
            return track.num_frames

        def run_stream() -> int:
            stream = pipeline.stream()
            return sum(1 for frame in decode_frames(path) if stream.update(frame) is not None)

        results = {"decode": timed(lambda: sum(1 for _ in decode_frames(path))), "track": timed(run_track)}
        results["crops"] = timed(lambda: sum(1 for _ in aligned_crops(path, track, pipeline)))
        results["offline"] = (info.num_frames, results["track"][1] + results["crops"][1])
        results["stream"] = timed(run_stream)
        for name, (frames, seconds) in results.items():
            fps = frames / seconds
            print(f"{name:8s} {fps:7.1f} frames/s   {fps / info.fps:5.2f}x real time   ({seconds:.2f} s)")
        found = track.detected.mean()
        print(f"face found on {found:.1%} of the frames; load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
