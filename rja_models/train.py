"""Train the audio-visual emotion model.

    python -m rja_models.train                      # the embedded default: synthetic data, CPU-sized
    python -m rja_models.train --config configs/affwild2.yaml --data-root /data/Aff-Wild2
    torchrun --nproc_per_node=2 -m rja_models.train ...   # DDP: gloo on CPU, nccl on GPU

Options come from the parser defaults, then `--config FILE` (YAML/JSON), then the command line.
Writes to `--out`: last.pt (every epoch: weights, optimizer, schedule and RNG state, for --resume),
best.pt (best validation mean CCC: weights and model config only, for evaluate/predict),
metrics.jsonl, TensorBoard events (when tensorboard is installed), learning_curves.png,
val_predictions.png and summary.json. A bad option or file is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from typing import Any

from rja_models.cli import UsageError, command_parser, run_command
from rja_models.config import ModelConfig
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
    check_backend,
    model_config,
    options_dict,
    parse_args,
)

# The embedded default's model: the paper's architecture (both backbones, U-BLSTMs, recursive
# joint attention with T = 2, J-BLSTM) at sizes a 2-core CPU trains end to end in minutes:
# 32x32 crops, clips of 4 frames, 8 clips per sub-sequence.
PRESET: dict[str, Any] = {"image_size": 32, "clip_frames": 4, "clips": 8}
PROG = "python -m rja_models.train"


def default_model_config() -> ModelConfig:
    """The model `python -m rja_models.train` trains with no arguments (the CPU-sized preset)."""
    return model_config(parse_args(build_parser(), []), PRESET)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, __doc__)
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
    if config.freeze_backbones and config.use_backbones and not (
            config.audio_backbone_weights or config.visual_backbone_weights):
        warnings.warn("--freeze-backbones without --audio/visual-backbone-weights: the frozen backbones keep "
                      "their random initialisation", stacklevel=2)
    ctx = init_distributed(args.device)
    try:
        check_backend(config, ctx.device)
        progress = progress_enabled(args.quiet, ctx.is_main)
        root = prepare_data_root(args, config, ctx, progress)
        if args.data == "features":
            config = feature_config(root, config)
        train_set = build_dataset(args, root, "train", config, stride=args.train_stride, progress=progress,
                                  training=True)
        if not config.audio_seconds and getattr(train_set, "audio_window", None) is not None:
            # The audio per clip in seconds from here on, so evaluate/predict cut the same span at any frame rate.
            config = config.replace(audio_seconds=train_set.audio_window.seconds)
        datasets = {"train": train_set, "val": build_dataset(args, root, "val", config, progress=progress)}
        for split, ds in datasets.items():
            names = tuple(getattr(ds, "target_names", config.targets.names))
            if isinstance(ds, FeatureDataset) and names != config.targets.names:
                raise UsageError(f"the {split} features under --data-root {root} hold targets {names}, the model "
                                 f"{config.targets.names} (set --target-names)")
        # What evaluate/predict need to cut clips like training did.
        extra = {"data": {"audio_samples": getattr(datasets["train"], "audio_samples", None), "source": args.data}}
        return Trainer(args, config, datasets, ctx, extra).fit()
    finally:
        shutdown_distributed()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command: `run` on `argv`; a bad input is one line on stderr and exit code 2."""
    return run_command(PROG, lambda: run(parse_args(build_parser(), argv)))


if __name__ == "__main__":
    main()
