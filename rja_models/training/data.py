"""Datasets and loaders for the CLIs, from the `--data` options: the synthetic set (generated once
into a cache), an Aff-Wild2-layout tree, or precomputed features (`<root>/<split>/<video>.pt`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from rja_models.config import ModelConfig
from rja_models.data import (
    SPLIT_FOLDERS,
    AffWild2Dataset,
    DataError,
    FeatureDataset,
    dataset_options,
    generate_synthetic_dataset,
)
from rja_models.training.distributed import DistContext, ShardSampler, barrier
from rja_models.training.options import default_cache_dir, video_names

SPLITS = tuple(SPLIT_FOLDERS)  # ("train", "val")


def synthetic_root(args: argparse.Namespace, config: ModelConfig) -> Path:
    """The cache directory of the synthetic set these options describe: one per parameter set, so
    changing a parameter never regenerates (and never invalidates) another run's data."""
    if args.data_root is not None:
        return args.data_root
    name = (f"v{args.synthetic_videos}-s{args.synthetic_seconds:g}-px{config.image_size}-sr{config.sample_rate}"
            f"-seed{args.synthetic_seed}")
    return default_cache_dir() / "synthetic-v1" / name


def prepare_data_root(args: argparse.Namespace, config: ModelConfig, ctx: DistContext, progress: bool) -> Path:
    """The data root; for the synthetic source, generated first if not cached (by rank 0 only)."""
    if args.data != "synthetic":
        if args.data_root is None:
            raise SystemExit(f"error: --data {args.data} needs --data-root")
        return args.data_root
    root = synthetic_root(args, config)
    if ctx.is_main:
        generate_synthetic_dataset(root, num_videos=args.synthetic_videos, seconds=args.synthetic_seconds,
                                   seed=args.synthetic_seed, image_size=config.image_size,
                                   sample_rate=config.sample_rate, progress=progress)
    barrier(ctx)
    return root


def feature_config(root: Path, config: ModelConfig) -> ModelConfig:
    """`config` adapted to the feature files under `root`: no backbones, their sizes and clip length."""
    split_dir = next((root / s for s in SPLITS if (root / s).is_dir()), None)
    if split_dir is None:
        raise DataError(root, f"holds none of the feature folders {', '.join(SPLITS)}")
    probe = FeatureDataset(split_dir, clips=1)
    da, dv = probe.feature_dims
    return config.replace(use_backbones=False, da=da, dv=dv, clip_frames=probe.clip_frames)


def build_dataset(args: argparse.Namespace, root: Path, split: str, config: ModelConfig, *,
                  stride: int | None = None, audio_samples: int | None = None, progress: bool = False,
                  training: bool = False) -> Dataset:
    """The `split` dataset of sub-sequences of `config.clips` clips, windowed as `config` says
    (`rja_models.data.windows`); `stride` in frames (None: no overlap); `audio_samples` per clip for
    checkpoints that stored no `audio_seconds` (None: one clip span at the split's usual frame rate);
    `training`: the training set (the authors' tiled training windows, color jitter)."""
    wanted = video_names(args.videos)
    if args.data == "features" and (config.window_layout, config.frame_dilation, config.label_frame) != (
            "strided", 1, "all"):
        raise SystemExit("error: --data features holds back-to-back clips of consecutive frames; "
                         "--window-layout tiled, --frame-dilation and --label-frame last need raw clips")
    if config.window_layout == "tiled" and stride is not None:
        raise SystemExit("error: --train-stride is for --window-layout strided; the tiled layout places its "
                         "windows itself (one frame apart in blocks, as the authors')")
    if args.data == "features":
        folder = root / split
        names = None if wanted is None else [v for v in wanted if (folder / f"{v}.pt").exists()]
        dataset = FeatureDataset(folder, clips=config.clips, videos=names,
                                 stride=None if stride is None else max(1, stride // config.clip_frames))
        return _non_empty(dataset, split, folder, args.videos)
    names = None
    if wanted is not None:
        folder = root / "VA_Estimation_Challenge" / SPLIT_FOLDERS[split]
        names = [v for v in wanted if (folder / f"{v}.txt").exists()]
    dataset = AffWild2Dataset(root, split, stride=stride, videos=names, visual_only=not config.uses_audio,
                              audio_samples=audio_samples, training=training, color_jitter=config.color_jitter,
                              target_names=config.targets.names, progress=progress, **dataset_options(config))
    return _non_empty(dataset, split, root, args.videos)


def _non_empty(dataset: Dataset, split: str, where: Path, videos: str | None) -> Dataset:
    # An empty split would train on nothing or report a NaN CCC; say why instead.
    if len(dataset) == 0:
        chosen = f" among --videos {videos}" if videos else ""
        raise SystemExit(f"error: the {split} split under {where} has no sub-sequence{chosen}")
    return dataset


def train_loader(dataset: Dataset, batch_size: int, ctx: DistContext, seed: int, num_workers: int,
                 shuffle: bool = True) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled loader (or in order, `shuffle=False`, as the authors'); the order of epoch e depends only
    on (seed, e) (`sampler.set_epoch(e)`), so a resumed run sees the same batches. `batch_size` is
    global: each of W ranks loads batch_size / W."""
    if batch_size % ctx.world_size:
        raise SystemExit(f"error: --batch-size {batch_size} is not divisible by the {ctx.world_size} processes")
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size // ctx.world_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=ctx.device.type == "cuda")
    return loader, sampler


def eval_loader(dataset: Dataset, batch_size: int, ctx: DistContext, num_workers: int) -> DataLoader:
    """This rank's shard of `dataset`, in order, each item on exactly one rank."""
    return DataLoader(dataset, batch_size=max(1, batch_size // ctx.world_size),
                      sampler=ShardSampler(len(dataset), ctx), num_workers=num_workers,
                      pin_memory=ctx.device.type == "cuda")


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    """Keyword arguments of `RJAModel.forward` for a batch of raw clips or of features."""
    keys = ("xa", "xv") if "xa" in batch else ("frames", "audio")
    return {k: batch[k].to(device, non_blocking=True) for k in keys if batch.get(k) is not None}
