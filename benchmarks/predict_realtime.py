"""Real-time factor of `python -m rja_models.predict`: wall time / video duration, face pipeline and whole frame.

    python benchmarks/predict_realtime.py [--seconds 60] [--device cpu] [--overlay] [--json out.json]
    # prints {"face": {"wall_s": ..., "rtf": ...}, "whole_frame": {...}, ...}

The input is generated: a 640x480 30 fps video of a real photograph (matplotlib's grace_hopper.jpg)
moving over a background, with a chirp as its audio. The model is the one `python -m rja_models.train`
trains by default (R3D-18 and ResNet-18 backbones at 32 px, 8 clips of 4 frames; `--paper-size`: 112 px,
clips of 8 frames), untrained: the speed does not depend on the weights.
Each mode is timed end to end as the command runs it (decoding, face tracking and
alignment, windows every half window, the model, the CSV and the plot; `--overlay` adds the overlay
video), after one short warm-up run that loads the models.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image

from rja_models import predict
from rja_models.checkpoint import save_checkpoint
from rja_models.config import ModelConfig
from rja_models.data import write_av_file
from rja_models.model import RJAModel
from rja_models.train import default_model_config

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
SIZE, FPS, SAMPLE_RATE = (640, 480), 30, 16000


def make_video(path: Path, seconds: float) -> None:
    """The photo's head and shoulders (a face of ~200 px) drifting over a flat background, and a chirp."""
    with Image.open(PHOTO) as photo:
        patch = photo.convert("RGB").crop((96, 72, 440, 420))
    n = round(seconds * FPS)

    def frames():
        for i in range(n):
            frame = Image.new("RGB", SIZE, (70, 90, 80))
            phase = 2 * np.pi * i / (10 * FPS)
            frame.paste(patch, (round(150 + 100 * np.sin(phase)), round(60 + 40 * np.cos(phase))))
            yield np.asarray(frame)

    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * (200 * t + 5 * t**2))).astype(np.float32)
    write_av_file(path, frames(), fps=FPS, audio=audio, sample_rate=SAMPLE_RATE)


def time_predict(video: Path, checkpoint: Path, out: Path, device: str, *options: str) -> float:
    start = time.perf_counter()
    predict.main([str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--device", device, "--quiet",
                  *options])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="video duration (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="(default: %(default)s)")
    parser.add_argument("--overlay", action="store_true", help="also write the overlay video")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--paper-size", action="store_true",
                        help="the paper-sized model (112x112 crops, clips of 8 frames) instead of the default one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rja-rtf-") as tmp:
        base = Path(tmp)
        checkpoint = base / "model.pt"
        save_checkpoint(checkpoint, RJAModel(ModelConfig() if args.paper_size else default_model_config()))
        video, warmup = base / "clip.mp4", base / "warmup.mp4"
        make_video(video, args.seconds)
        make_video(warmup, 3.0)
        results: dict = {"seconds": args.seconds, "size": list(SIZE), "fps": FPS, "device": args.device,
                         "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                         "load_average": os.getloadavg()[0]}
        for mode, options in (("face", ()), ("whole_frame", ("--whole-frame",))):
            extra = (*options, "--overlay", str(base / f"{mode}.mp4")) if args.overlay else options
            time_predict(warmup, checkpoint, base / "warmup", args.device, *options)
            wall = time_predict(video, checkpoint, base / mode, args.device, *extra)
            results[mode] = {"wall_s": round(wall, 2), "rtf": round(wall / args.seconds, 3)}
    print(json.dumps(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
