"""Predict per-frame valence/arousal for any video file.

    python -m rja_models.predict VIDEO --checkpoint runs/train/best.pt [--out DIR]

Writes `DIR/<video>.csv` (frame, timestamp in seconds, one column per target) and `DIR/<video>.png`.
The whole frame is the model's visual input (no face detection): crop faces beforehand for
real footage. A video without an audio stream is an error unless `--visual-only` (the audio is
then silence, which an audio-visual model was not trained on: expect worse predictions).
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rja_models.checkpoint import model_from_checkpoint
from rja_models.data import DataError, VideoFileDataset
from rja_models.training.data import eval_loader
from rja_models.training.distributed import DistContext, resolve_device
from rja_models.training.evaluation import predict_windows, video_series
from rja_models.training.logs import progress_enabled, say
from rja_models.training.plots import plot_series


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rja_models.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path, help="any video file FFmpeg reads")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint of rja_models.train")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output directory (default: %(default)s)")
    parser.add_argument("--visual-only", action="store_true", help="accept a video without audio (audio = silence)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=int, default=4, help="(default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no messages")
    return parser


def run(args: argparse.Namespace) -> Path:
    """Write the CSV and the plot; returns the CSV's path."""
    device = resolve_device(args.device)
    model, config, ckpt = model_from_checkpoint(args.checkpoint, map_location=device)
    if not config.use_backbones:
        raise SystemExit("error: this checkpoint was trained on precomputed features; predicting from a video "
                         "needs a model with backbones")
    visual_only = args.visual_only or not config.uses_audio
    if args.visual_only and config.uses_audio:
        warnings.warn("--visual-only with an audio-visual model: its audio input is silence", stacklevel=2)
    try:
        dataset = VideoFileDataset(args.video, config.clip_frames, config.clips, sample_rate=config.sample_rate,
                                   image_size=config.image_size, visual_only=visual_only,
                                   audio_samples=ckpt.get("extra", {}).get("data", {}).get("audio_samples"),
                                   num_targets=config.targets.count)
    except DataError as e:
        hint = "" if visual_only or "audio" not in str(e) else " (pass --visual-only to predict from the frames alone)"
        raise SystemExit(f"error: {e}{hint}") from None
    ctx = DistContext(device=device)
    records = predict_windows(model, eval_loader(dataset, args.batch_size, ctx, 0), device,
                              progress=progress_enabled(args.quiet, True), desc=args.video.name)
    series = next(iter(video_series(records).values()))
    pred = series.pred[: dataset.num_frames]  # the last window pads past the end
    times = dataset.timestamps().numpy()
    names = config.targets.names
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.video.stem
    csv_path = args.out / f"{stem}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "timestamp", *names])
        for i, (t, row) in enumerate(zip(times, pred)):
            writer.writerow([i, f"{t:.6f}", *(f"{v:.6f}" for v in row)])
    plot_series({stem: {"x": times, "pred": pred}}, names, args.out / f"{stem}.png", xlabel="time (s)")
    say(f"{len(pred)} frames: mean " + ", ".join(f"{n} {m:+.3f}" for n, m in zip(names, np.mean(pred, axis=0)))
        + f"; wrote {csv_path} and {stem}.png", args.quiet)
    return csv_path


def main(argv: Sequence[str] | None = None) -> Path:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
