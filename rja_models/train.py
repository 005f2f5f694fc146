"""Train the audio-visual emotion model.

    python -m rja_models.train                      # the embedded default: synthetic data, CPU-sized
    python -m rja_models.train --config configs/affwild2.yaml --data-root /data/Aff-Wild2
    torchrun --nproc_per_node=2 -m rja_models.train ...   # DDP: gloo on CPU, nccl on GPU

Options come from the parser defaults, then `--config FILE` (YAML/JSON), then the command line.
Writes to `--out`: last.pt (every epoch), best.pt (best validation mean CCC), metrics.jsonl,
TensorBoard events, learning_curves.png, val_predictions.png and summary.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from rja_models.data import FeatureDataset
from rja_models.training.data import build_dataset, feature_config, prepare_data_root
from rja_models.training.distributed import init_distributed, shutdown_distributed
from rja_models.training.logs import progress_enabled
from rja_models.training.loop import Trainer
from rja_models.training.options import (
    add_data_options,
    add_model_options,
    add_runtime_options,
    add_train_options,
    model_config,
    options_dict,
    parse_args,
)

# The embedded default's model: the paper's architecture (both backbones, U-BLSTMs, recursive
# joint attention with T = 2, J-BLSTM) at sizes a 2-core CPU trains end to end in minutes:
# 32x32 crops, clips of 4 frames, 8 clips per sub-sequence.
PRESET: dict[str, Any] = {"image_size": 32, "clip_frames": 4, "clips": 8}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rja_models.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_options(parser)
    add_data_options(parser)
    add_train_options(parser)
    add_model_options(parser, PRESET)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train with parsed options; returns the summary (`{"stopped": True, ...}` after --stop-after)."""
    config = model_config(args, PRESET)
    if args.print_config:
        print(json.dumps({"options": options_dict(args), "model": config.to_dict()}, indent=2))
        return {}
    ctx = init_distributed(args.device)
    try:
        progress = progress_enabled(args.quiet, ctx.is_main)
        root = prepare_data_root(args, config, ctx, progress)
        if args.data == "features":
            config = feature_config(root, config)
        datasets = {"train": build_dataset(args, root, "train", config, stride=args.train_stride, progress=progress),
                    "val": build_dataset(args, root, "val", config, progress=progress)}
        for split, ds in datasets.items():
            names = tuple(getattr(ds, "target_names", config.targets.names))
            if isinstance(ds, FeatureDataset) and names != config.targets.names:
                raise SystemExit(f"error: the {split} features hold targets {names}, the model {config.targets.names}")
        # What evaluate/predict need to cut clips like training did.
        extra = {"data": {"audio_samples": getattr(datasets["train"], "audio_samples", None), "source": args.data}}
        return Trainer(args, config, datasets, ctx, extra).fit()
    finally:
        shutdown_distributed()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(parse_args(build_parser(), argv))


if __name__ == "__main__":
    main()
