"""Latency and throughput of live mode on a generated 640x480 30 fps stream played in real time.

    python benchmarks/live_latency.py [--seconds 30] [--device cpu] [--out runs/live_latency]

Writes (once) an A/V file of moving patterns and a tone and, as a checkpoint, an untrained model
of the configuration `python -m rja_models.train` trains by default (`--paper-size`: 112x112 crops,
clips of 8 frames) (speed does not depend on the weights), then runs `python -m rja_models.live FILE
--realtime` whole-frame and, when the face pipeline is installed, with face detection, and prints
one JSON object per mode: frames per second sustained, median / 95th percentile / max latency from a
frame's arrival to its row, windows run and dropped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from rja_models.checkpoint import save_checkpoint
from rja_models.cli import UsageError
from rja_models.config import ModelConfig
from rja_models.data import write_av_file
from rja_models.model import RJAModel
from rja_models.train import default_model_config

WIDTH, HEIGHT, FPS, SR = 640, 480, 30, 16000


def frames(n: int):
    """Moving colour patterns, one frame at a time (a 30 s stream does not fit in memory at once)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    for t in range(n):
        base = (128 + 100 * np.sin(x / 37 + t / 9) * np.cos(y / 23 - t / 11)).astype(np.uint8)
        yield np.stack([base, np.roll(base, 25, 1), 255 - base], -1)


def prepare(out: Path, seconds: float, paper_size: bool) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    model = "paper_size" if paper_size else "default"
    video, checkpoint = out / f"stream_{seconds:g}s.mkv", out / f"{model}_untrained.pt"
    if not video.exists():
        n = round(seconds * FPS)
        k = np.arange(round(seconds * SR))
        audio = (0.3 * np.sin(2 * np.pi * 220 * k / SR) * (1 + np.sin(k / 3000))).astype(np.float32)
        write_av_file(video, frames(n), fps=FPS, audio=audio, sample_rate=SR)
    if not checkpoint.exists():
        save_checkpoint(checkpoint, RJAModel(ModelConfig() if paper_size else default_model_config()))
    return video, checkpoint


def measure(video: Path, checkpoint: Path, device: str, mode: str, out: Path) -> dict:
    stats = out / f"stats_{mode}.json"
    command = [sys.executable, "-m", "rja_models.live", str(video), "--checkpoint", str(checkpoint), "--realtime",
               "--device", device, "--out", str(out / f"rows_{mode}.csv"), "--stats-json", str(stats), "--quiet"]
    subprocess.run(command + (["--whole-frame"] if mode == "whole-frame" else []), check=True)
    return {"mode": mode, **json.loads(stats.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/live_latency"))
    parser.add_argument("--paper-size", action="store_true",
                        help="the paper-sized model (112x112 crops, clips of 8 frames) instead of the default one")
    args = parser.parse_args()
    video, checkpoint = prepare(args.out, args.seconds, args.paper_size)
    modes = ["whole-frame"]
    try:
        from rja_models.inference.faces import require_face_models

        require_face_models()
        modes.append("face")
    except UsageError as e:
        print(f"face mode skipped: {e}", file=sys.stderr)
    for mode in modes:
        print(json.dumps(measure(video, checkpoint, args.device, mode, args.out)), flush=True)


if __name__ == "__main__":
    main()
