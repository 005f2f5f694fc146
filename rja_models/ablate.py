"""Reproduce the paper's Table-1 ablation (and the single-modality / concatenation baselines) on any
data set the loaders read, and write a markdown table of validation CCCs.

    python -m rja_models.ablate                                   # synthetic data, a few minutes on a CPU
    python -m rja_models.ablate --backbone-checkpoint runs/train/best.pt --epochs 30
    python -m rja_models.ablate --data affwild2 --data-root /data/Aff-Wild2 --backbone-checkpoint C

The backbones are run once to extract per-clip features of both splits (cached in
`--features-dir`), then every variant trains its fusion and heads on those features with the
same schedule and seed (every training option applies; see `python -m rja_models.train --help`).
The features come from `--backbone-checkpoint` (e.g. a model trained by `rja_models.train`), or
by default from randomly initialised backbones, which keeps the whole ablation to minutes but
makes the absolute CCCs lower than with trained backbones.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rja_models import train
from rja_models.checkpoint import load_checkpoint, model_from_checkpoint
from rja_models.cli import UsageError, run_command
from rja_models.config import ABLATIONS, ATTENTION_FUSIONS, ModelConfig
from rja_models.features import extract_features
from rja_models.model import RJAModel
from rja_models.training.data import SPLITS, build_dataset, eval_loader, prepare_data_root
from rja_models.training.distributed import DistContext, resolve_device
from rja_models.training.logs import progress_enabled, say
from rja_models.training.options import (
    check_backend,
    input_file,
    model_config,
    options_dict,
    output_dir,
    output_file,
    parse_args,
)

PROG = "python -m rja_models.ablate"

TABLE1 = ("no_ublstm_t1", "no_jblstm_t1", "blstms_t1", "no_blstms_t2", "blstms_t2", "blstms_t3", "blstms_t4")
BASELINES = ("audio_only", "visual_only", "concat")

# Fusion-only training on features is cheap: more epochs than end to end, overlapping windows.
_DEFAULTS = {"epochs": 8, "out": Path("runs/ablation"), "train_stride": 8, "lr": 3e-4, "batch_size": 8}


def build_parser() -> argparse.ArgumentParser:
    parser = train.build_parser()
    parser.prog, parser.description = PROG, __doc__
    g = parser.add_argument_group("ablation")
    g.add_argument("--variants", default=",".join((*TABLE1, *BASELINES)),
                   help=f"comma-separated variants of {sorted(ABLATIONS)} (default: %(default)s)")
    g.add_argument("--backbone-checkpoint", type=input_file, default=None,
                   help="extract features with this checkpoint's backbones (default: random initialisation)")
    g.add_argument("--features-dir", type=output_dir, default=None, help="feature cache (default: <out>/features)")
    g.add_argument("--table", type=output_file, default=None, help="markdown table path (default: <out>/ablation.md)")
    parser.set_defaults(**_DEFAULTS)
    return parser


def prepare_features(args: argparse.Namespace, ctx: DistContext) -> Path:
    """Extract the features of both splits once; reuse them while the inputs that made them match."""
    features = args.features_dir or args.out / "features"
    if args.backbone_checkpoint is not None:
        model, config, _ = model_from_checkpoint(args.backbone_checkpoint, map_location=ctx.device)
        if not config.use_backbones:
            raise UsageError(f"--backbone-checkpoint {args.backbone_checkpoint} has no backbones (it was trained "
                             "on features)")
    else:
        # Both backbones, whatever the variants: every variant reads the same features.
        config = model_config(args, train.PRESET).replace(use_backbones=True, fusion="rja",
                                                          visual_pooling="audio_guided")
        torch.manual_seed(args.seed)
        model = RJAModel(config).to(ctx.device)
    stamp = {"backbone_checkpoint": str(args.backbone_checkpoint), "model": config.to_dict(), "seed": args.seed,
             **{k: v for k, v in options_dict(args).items() if k.startswith(("data", "synthetic", "videos"))}}
    marker = features / "features.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return features
    marker.unlink(missing_ok=True)
    progress = progress_enabled(args.quiet, True)
    root = prepare_data_root(args, config, ctx, progress)
    for split in SPLITS:
        dataset = build_dataset(args, root, split, config, progress=progress)  # windows tile each video
        extract_features(model, eval_loader(dataset, args.batch_size, ctx, args.num_workers), features / split,
                         progress=progress)
    marker.write_text(json.dumps(stamp))
    return features


def markdown_table(results: dict[str, dict[str, Any]], names: Sequence[str]) -> str:
    """One row per variant: its switches and best validation CCCs."""
    head = ["variant", "fusion", "U-BLSTM", "J-BLSTM", "T", *names, "mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, r in results.items():
        c = r["config"]
        iterations = str(c["iterations"]) if c["fusion"] in ATTENTION_FUSIONS else "-"
        switches = [c["fusion"], _mark(c["unimodal_blstm"]), _mark(c["joint_blstm"]), iterations]
        lines.append("| " + " | ".join([variant, *switches, *(f"{r['val'][k]:.4f}" for k in [*names, "mean"])]) + " |")
    return "\n".join(lines) + "\n"


def _mark(flag: bool) -> str:
    return "yes" if flag else "no"


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(ABLATIONS)
    if unknown:
        raise UsageError(f"--variants: unknown variants {sorted(unknown)}; expected some of {sorted(ABLATIONS)}")
    if args.print_config:
        print(json.dumps(options_dict(args), indent=2))
        return {}
    ctx = DistContext(device=resolve_device(args.device))
    check_backend(model_config(args, train.PRESET), ctx.device)
    features = prepare_features(args, ctx)
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        say(f"== {variant}", args.quiet)
        vargs = copy.copy(args)
        vargs.data, vargs.data_root, vargs.ablation = "features", features, variant
        vargs.out, vargs.overwrite, vargs.resume, vargs.videos = args.out / variant, True, False, None
        summary = train.run(vargs)
        config = ModelConfig.from_dict(load_checkpoint(vargs.out / "best.pt")["config"])
        results[variant] = {"val": summary["val"], "best_epoch": summary["best_epoch"], "config": config.to_dict()}
    names = next(iter(results.values()))["config"]["targets"]["names"]
    table = markdown_table(results, names)
    path = args.table or args.out / "ablation.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    source = args.backbone_checkpoint or "randomly initialised backbones"
    path.write_text(f"# Ablation: best validation CCC ({args.epochs} epochs on features of {source})\n\n{table}")
    (args.out / "ablation.json").write_text(json.dumps(results, indent=2))
    say(f"\n{table}\nwrote {path}", args.quiet)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """The command: `run` on `argv`; a bad input is one line on stderr and exit code 2."""
    return run_command(PROG, lambda: run(parse_args(build_parser(), argv)))


if __name__ == "__main__":
    main()
