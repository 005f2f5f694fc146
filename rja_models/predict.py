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
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rja_models.checkpoint import model_from_checkpoint
from rja_models.cli import UsageError, command_parser, run_command
from rja_models.data import VideoFileDataset, probe_video
from rja_models.training.data import eval_loader
from rja_models.training.distributed import DistContext, resolve_device
from rja_models.training.evaluation import predict_windows, video_series
from rja_models.training.logs import progress_enabled, say
from rja_models.training.options import POSITIVE_INT, check_backend, device_name, input_file, output_dir, parse_args
from rja_models.training.plots import plot_series

PROG = "python -m rja_models.predict"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, __doc__, usage="%(prog)s VIDEO --checkpoint CKPT [options]")
    parser.add_argument("video", type=input_file, help="any video file FFmpeg reads")
    parser.add_argument("--checkpoint", type=input_file, required=True, help="a checkpoint of rja_models.train")
    parser.add_argument("--out", type=output_dir, default=Path("predictions"),
                        help="output directory (default: %(default)s)")
    parser.add_argument("--visual-only", action="store_true", help="accept a video without audio (audio = silence)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="(default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no messages")
    return parser


def run(args: argparse.Namespace) -> Path:
    """Write the CSV and the plot; returns the CSV's path."""
    device = resolve_device(args.device)
    model, config, ckpt = model_from_checkpoint(args.checkpoint, map_location=device)
    check_backend(config, device, source=f"--checkpoint {args.checkpoint}: its backend")
    if not config.use_backbones:
        raise UsageError(f"--checkpoint {args.checkpoint} was trained on precomputed features; predicting from a "
                         "video needs a model with backbones")
    visual_only = args.visual_only or not config.uses_audio
    # Checked here, not left to the dataset, whose message gives the Python API's visual_only=True.
    if not visual_only and not probe_video(args.video).has_audio:
        raise UsageError(f"{args.video}: has no audio stream; pass --visual-only to predict from the frames "
                         "alone (the audio is then silence)")
    if args.visual_only and config.uses_audio:
        warnings.warn("--visual-only with an audio-visual model: its audio input is silence", stacklevel=2)
    # Clips cut as in training: windowing, and each clip's audio the same span of time at any frame rate.
    dataset = VideoFileDataset.for_model(args.video, config, ckpt.get("extra"), visual_only=visual_only)
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
    plot_series({stem: {"x": times, "pred": pred}}, names, args.out / f"{stem}.png", xlabel="time (s)",
                ylim=(config.targets.low, config.targets.high))
    say(f"{len(pred)} frames: mean " + ", ".join(f"{n} {m:+.3f}" for n, m in zip(names, np.mean(pred, axis=0)))
        + f"; wrote {csv_path} and {stem}.png", args.quiet)
    return csv_path


def main(argv: Sequence[str] | None = None) -> Path:
    """The command: `run` on `argv`; a bad input is one line on stderr and exit code 2."""
    return run_command(PROG, lambda: run(parse_args(build_parser(), argv)))


if __name__ == "__main__":
    main()
