"""Evaluate a checkpoint: CCC per split (over all valid frames) and per video.

    python -m rja_models.evaluate --checkpoint runs/train/best.pt            # the data it was trained on
    python -m rja_models.evaluate --checkpoint C --data affwild2 --data-root /data/Aff-Wild2 --split val \\
        --json ccc.json --csv ccc.csv

The data options default to those the checkpoint was trained with; a config file and the command
line override them. The protocol is the ABAW challenge's: every frame whose label is not -5 is scored,
once, also a frame without a face crop (it has the prediction of its clip, whose input shows the
neighbouring crop in its place); the output counts those frames apart. Each split gets
two CCCs: the raw per-frame one, and the "postprocessed" one the authors report (predictions clipped
to the target range, then smoothed per video: a moving average of 20 frames for valence, 50 for
arousal; `rja_models.metrics.postprocess`).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rja_models.checkpoint import load_checkpoint, model_from_checkpoint
from rja_models.cli import UsageError, command_parser, run_command
from rja_models.metrics import AUTHORS_SMOOTHING
from rja_models.training.data import SPLITS, build_dataset, eval_loader, prepare_data_root
from rja_models.training.distributed import init_distributed, shutdown_distributed
from rja_models.training.evaluation import ccc_report, format_table, gather_series, predict_windows
from rja_models.training.logs import progress_enabled, say
from rja_models.training.options import (
    add_data_options,
    add_runtime_options,
    check_backend,
    input_file,
    output_file,
    parse_args,
)

PROG = "python -m rja_models.evaluate"
_DATA_OPTIONS = ("data", "data_root", "videos", "synthetic_videos", "synthetic_seconds", "synthetic_seed")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, __doc__, usage="%(prog)s --checkpoint CKPT [options]")
    parser.add_argument("--checkpoint", type=input_file, required=True, help="a checkpoint of rja_models.train")
    parser.add_argument("--split", default="train,val", help="comma-separated splits (default: %(default)s)")
    parser.add_argument("--json", type=output_file, default=None, help="write the results as JSON here")
    parser.add_argument("--csv", type=output_file, default=None, help="write split,video,<targets>,mean rows here")
    add_runtime_options(parser)
    add_data_options(parser)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options over the data options stored in the checkpoint."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.checkpoint is not None:
        saved = load_checkpoint(pre.checkpoint).get("extra", {}).get("options", {})
        parser.set_defaults(**{k: (Path(v) if k == "data_root" and v else v) for k, v in saved.items()
                               if k in _DATA_OPTIONS})
    return parse_args(parser, argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """`{split: ccc_report}` for the requested splits; prints a table, writes --json/--csv."""
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise UsageError(f"--split {args.split}: unknown split(s) {sorted(unknown)}; expected {', '.join(SPLITS)}")
    ctx = init_distributed(args.device)
    try:
        model, config, ckpt = model_from_checkpoint(args.checkpoint, map_location=ctx.device)
        check_backend(config, ctx.device, source=f"--checkpoint {args.checkpoint}: its backend")
        if args.data == "features" and config.use_backbones:
            raise UsageError(f"--data features: --checkpoint {args.checkpoint} has backbones and reads raw clips")
        if args.data != "features" and not config.use_backbones:
            raise UsageError(f"--checkpoint {args.checkpoint} was trained on features: evaluate it with "
                             "--data features")
        progress = progress_enabled(args.quiet, ctx.is_main)
        root = prepare_data_root(args, config, ctx, progress)
        audio_samples = ckpt.get("extra", {}).get("data", {}).get("audio_samples")
        results = {}
        for split in splits:
            dataset = build_dataset(args, root, split, config, audio_samples=audio_samples, progress=progress)
            records = predict_windows(model, eval_loader(dataset, args.batch_size, ctx, args.num_workers),
                                      ctx.device, progress=progress, desc=split)
            targets = config.targets
            results[split] = ccc_report(gather_series(ctx, records), targets.names, clip=(targets.low, targets.high))
        if ctx.is_main:
            report(results, config.targets.names, args)
        return results
    finally:
        shutdown_distributed()


def report(results: dict[str, Any], names: Sequence[str], args: argparse.Namespace) -> None:
    for split, r in results.items():
        total = f"ALL ({split}, {r['frames']} frames, {r['frames_without_face']} without a face crop)"
        say(f"\n{split}: raw per-frame CCC\n" + format_table({**r["videos"], total: r["overall"]}, names), args.quiet)
        post = r["postprocessed"]
        rows = {**post["videos"], total: post["overall"]}
        say(f"\n{split}: postprocessed CCC (the authors': clipped to the target range, smoothed per video over "
            f"{', '.join(f'{k} {v}' for k, v in AUTHORS_SMOOTHING.items())} frames)\n" + format_table(rows, names),
            args.quiet)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["split", "video", *names, "mean", "scoring"])
            for split, r in results.items():
                for scoring, part in (("raw", r), ("postprocessed", r["postprocessed"])):
                    for video, values in [*part["videos"].items(), ("ALL", part["overall"])]:
                        writer.writerow([split, video, *(f"{values[k]:.6f}" for k in [*names, "mean"]), scoring])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command: `run` on `argv`; a bad input is one line on stderr and exit code 2."""
    return run_command(PROG, lambda: run(parse(argv)))


if __name__ == "__main__":
    main()
