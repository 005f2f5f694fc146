"""The training loop shared by `rja_models.train` and `rja_models.ablate`.

Resuming repeats an uninterrupted run bit for bit: `last.pt` is written after every epoch with the
weights, optimizer and schedule state, the history, and the Python/NumPy/torch RNG states taken at
the end of the epoch; the data order of epoch e depends only on (seed, e). With `--deterministic`
(default) the kernels are deterministic too, so a resumed run's weights equal the uninterrupted run's.
`best.pt` holds only what inference needs (weights, model config, data settings, the run's state),
a third of `last.pt`: the optimizer's two moments per weight double a checkpoint's size.

Each epoch logs (metrics.jsonl, TensorBoard) the learning rate of its first and last step (the
schedule steps every batch), the training loss (mean over batches) and CCC (over the frames the
epoch trained on, predicted in training mode), and the validation loss and CCC (over the split).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from rja_models.checkpoint import (
    RESUME_KEYS,
    CheckpointError,
    capture_rng_state,
    checkpoint_config,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
)
from rja_models.cli import UsageError
from rja_models.config import ModelConfig
from rja_models.metrics import CCCAccumulator, ccc_loss, valid_mask
from rja_models.model import RJAModel
from rja_models.training.data import eval_loader, model_inputs, train_loader
from rja_models.training.distributed import (
    DistContext,
    all_gather,
    all_gather_objects,
    barrier,
    data_parallel,
    gather_with_grad,
)
from rja_models.training.evaluation import VideoSeries, autocast, ccc_report, gather_series, predict_windows
from rja_models.training.logs import MetricsLog, format_ccc, progress_enabled, say
from rja_models.training.options import options_dict
from rja_models.training.plots import plot_learning_curves, plot_series

# Options that may change between an interrupted run and its resumption.
# What last.pt's "extra" holds for --resume, besides the caller's extras.
_RESUME_EXTRAS = ("state", "rng", "options", "scaler")
_RESUMABLE = {"epochs", "resume", "overwrite", "stop_after", "quiet", "num_workers", "device", "config",
              "print_config", "tensorboard", "plot_videos", "data_root", "out"}


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reproducibility on CUDA
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def make_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=args.lr, weight_decay=args.weight_decay)


def lr_factor(args: argparse.Namespace, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak LR at optimizer step `step`: linear warm-up, then the schedule."""
    warmup = args.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if args.schedule == "cosine":
        total = max(args.epochs * steps_per_epoch - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / total, 1.0)))
    if args.schedule == "step":
        start = getattr(args, "step_start_epochs", 0.0)  # the authors' train.py: epochs 0..S before decaying
        if start and step < (start + 1) * steps_per_epoch:
            return getattr(args, "step_start_factor", 1.0)
        step = max(step - start * steps_per_epoch, 0)
        return args.step_gamma ** int(step // max(args.step_epochs * steps_per_epoch, 1))
    return 1.0


def compute_loss(name: str, pred: Tensor, labels: Tensor, mask: Tensor, ctx: DistContext) -> Tensor:
    """`name` loss of the frame predictions over the global batch (see `distributed`)."""
    pred = gather_with_grad(ctx, pred)
    labels, mask = all_gather(ctx, labels), all_gather(ctx, mask.to(torch.uint8)).bool()
    return frame_loss(name, pred, labels, mask)


def frame_loss(name: str, pred: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """`name` loss ("ccc": mean over targets of 1 - CCC; "mse") over the valid frames of `pred` [..., T]."""
    if name in ("ccc", "ccc_sum"):
        return ccc_loss(pred, labels, mask, reduction="sum" if name == "ccc_sum" else "mean")
    keep = (mask.unsqueeze(-1) & valid_mask(labels)).to(pred.dtype)
    return ((pred - labels) ** 2 * keep).sum() / keep.sum().clamp(min=1)


def split_loss(name: str, series: dict[str, VideoSeries]) -> float:
    """`frame_loss` over every frame of a split at once (as its CCC is computed)."""
    pred, labels, mask = (torch.from_numpy(np.concatenate([getattr(s, k) for s in series.values()]))
                          for k in ("pred", "labels", "mask"))
    return float(frame_loss(name, pred, labels, mask))


@dataclass
class TrainState:
    """What `last.pt` carries besides weights and optimizer: enough to continue as if never stopped."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_ccc: float = -math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "history": self.history, "best_epoch": self.best_epoch, "best_ccc": self.best_ccc}


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer's bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_resumable(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    changed = sorted(k for k in now if k not in _RESUMABLE and saved.get(k) != now[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise UsageError(f"cannot resume {path} with different options ({details})")


class Trainer:
    """Fits `config` on `datasets["train"]`, validating on `datasets["val"]` every epoch; rank 0
    writes `out/` (checkpoints, metrics.jsonl, TensorBoard, PNGs, summary)."""

    def __init__(self, args: argparse.Namespace, config: ModelConfig, datasets: dict[str, Any],
                 ctx: DistContext, extra: dict[str, Any] | None = None) -> None:
        self.args, self.config, self.ctx = args, config, ctx
        self.out = Path(args.out)
        self.extra = extra or {}  # stored in checkpoints for evaluate/predict (e.g. audio samples per clip)
        self.progress = progress_enabled(args.quiet, ctx.is_main)
        self.quiet = args.quiet or not ctx.is_main
        self.amp_dtype = self._amp_dtype()
        seed_everything(args.seed, args.deterministic)
        model = RJAModel(config).to(ctx.device)
        self.model = model
        self.ddp = data_parallel(model, ctx)  # DDP with global BatchNorm when W > 1
        self.optimizer = make_optimizer(args, model)
        self.loader, self.sampler = train_loader(datasets["train"], args.batch_size, ctx, args.seed, args.num_workers,
                                                 shuffle=getattr(args, "shuffle", True))
        self.val_loader = eval_loader(datasets["val"], args.batch_size, ctx, args.num_workers)
        steps = len(self.loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(args, s, steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = TrainState()
        self._start()

    def _amp_dtype(self) -> torch.dtype | None:
        if not self.args.amp:
            return None
        if self.ctx.device.type != "cuda":
            warnings.warn("--amp is for CUDA; training in float32 on the CPU", stacklevel=2)
            return None
        return getattr(torch, self.args.amp_dtype)

    def _start(self) -> None:
        """Fresh start or resume from `out/last.pt`."""
        last = self.out / "last.pt"
        if self.args.resume:
            if not last.exists():
                raise UsageError(f"--resume but {last} does not exist (--out {self.out} holds no run to continue)")
            ckpt = load_checkpoint(last)  # CPU: RNG states must stay CPU tensors
            extra = ckpt.get("extra", {})
            missing = [*(k for k in RESUME_KEYS if k not in ckpt), *(f"extra.{k}" for k in _RESUME_EXTRAS
                                                                       if k not in extra)]
            if missing:
                raise CheckpointError(last, f"cannot be resumed: it lacks {', '.join(missing)} (best.pt and "
                                            "checkpoints of other tools hold no training state)")
            checkpoint_config(ckpt, last)  # readable by this version
            _check_resumable(extra["options"], options_dict(self.args), last)
            load_weights(self.model, ckpt, last)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(extra["scaler"])
            self.state = TrainState(**extra["state"])
            if len(extra["rng"]) != self.ctx.world_size:
                raise UsageError(f"{last} was written by {len(extra['rng'])} processes; resume it with as many")
            restore_rng_state(extra["rng"][self.ctx.rank])
        elif last.exists() and not self.args.overwrite:
            raise UsageError(f"{last} exists: pass --resume to continue that run or --overwrite to start over")
        elif self.ctx.is_main:
            (self.out / "best.pt").unlink(missing_ok=True)  # an overwritten run's best must not survive
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.log = MetricsLog(self.out, self.state.history, self.args.tensorboard)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch; returns its log fields: lr (first step), lr_last, train_loss, train (CCC)."""
        self.sampler.set_epoch(epoch)
        self.ddp.train()
        total, batches = 0.0, 0
        lrs: list[float] = []
        frames: list[tuple[Tensor, Tensor, Tensor]] = []  # this rank's (pred, labels, mask), for the epoch's CCC
        bar = tqdm(self.loader, desc=f"epoch {epoch}", leave=False, disable=not self.progress)
        for batch in bar:
            with autocast(self.ctx.device, self.amp_dtype):
                pred = self.ddp(**model_inputs(batch, self.ctx.device))["frame"].float()
            labels, mask = batch["labels"].to(self.ctx.device), batch["mask"].to(self.ctx.device)
            loss = compute_loss(self.args.loss, pred, labels, mask, self.ctx)
            frames.append((pred.detach().flatten(0, -2).cpu(), labels.flatten(0, -2).cpu(), mask.flatten().cpu()))
            lrs.append(self.scheduler.get_last_lr()[0])  # the rate this step uses (the schedule steps after it)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.args.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += loss.item()  # the global-batch loss: the same on every rank
            batches += 1
            bar.set_postfix(loss=f"{total / batches:.4f}")
        acc = CCCAccumulator(self.config.targets.names)
        for part in all_gather_objects(self.ctx, frames):  # every rank's frames (a padded shard repeats a few)
            for pred, labels, mask in part:
                acc.update(pred, labels, mask)
        return {"lr": lrs[0] if lrs else None, "lr_last": lrs[-1] if lrs else None,
                "train_loss": total / max(batches, 1), "train": acc.compute()}

    def validate(self, progress: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """(CCC report, per-video series) of the validation split, gathered over all ranks."""
        records = predict_windows(self.model, self.val_loader, self.ctx.device, amp_dtype=self.amp_dtype,
                                  progress=progress, desc="validation")
        series = gather_series(self.ctx, records)
        targets = self.config.targets
        return ccc_report(series, targets.names, clip=(targets.low, targets.high)), series

    def _checkpoint(self, path: Path, resumable: bool) -> None:
        """`resumable` (last.pt): also the optimizer, schedule, scaler and RNG states that --resume needs;
        else (best.pt) only what inference needs, a third of the size."""
        extra = {"state": self.state.to_dict(), "options": options_dict(self.args), **self.extra}
        if resumable:
            # Every rank's RNG states (each draws its own dropout masks); rank 0 writes them all.
            extra.update(rng=all_gather_objects(self.ctx, capture_rng_state()), scaler=self.scaler.state_dict())
        if not self.ctx.is_main:
            return
        if resumable:
            save_checkpoint(path, self.model, self.config, self.optimizer, self.scheduler, extra=extra)
        else:
            save_checkpoint(path, self.model, self.config, extra=extra)

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the summary (also written to out/summary.json)."""
        names = self.config.targets.names
        args, state = self.args, self.state
        stop = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
        epochs = tqdm(range(state.epoch + 1, stop + 1), desc="epochs", initial=state.epoch, total=args.epochs,
                      disable=not self.progress)
        for epoch in epochs:
            start = time.perf_counter()
            trained = self._train_epoch(epoch)
            report, series = self.validate(self.progress)
            val = report["overall"]
            entry = {"epoch": epoch, **trained, "val_loss": split_loss(args.loss, series), "val": val,
                     "val_postprocessed": report["postprocessed"]["overall"], "val_frames": report["frames"],
                     "val_frames_without_face": report["frames_without_face"], "seconds": time.perf_counter() - start}
            state.epoch = epoch
            state.history.append(entry)
            score = (entry["val_postprocessed"] if getattr(args, "best_on", "raw") == "postprocessed" else val)["mean"]
            improved = score > state.best_ccc  # NaN (a constant prediction) never improves
            if improved:
                state.best_epoch, state.best_ccc = epoch, score
            if self.ctx.is_main:
                self.log.log(entry)
            if improved:
                self._checkpoint(self.out / "best.pt", resumable=False)
            self._checkpoint(self.out / "last.pt", resumable=True)
            say(f"epoch {epoch}/{args.epochs}  train loss {entry['train_loss']:.4f}  val loss {entry['val_loss']:.4f}"
                f"  val CCC {format_ccc(val, names)}  postprocessed {format_ccc(entry['val_postprocessed'], names)}"
                f"  ({entry['seconds']:.1f} s)", self.quiet)
        if state.epoch < args.epochs:
            say(f"stopped after epoch {state.epoch} (--stop-after); continue with --resume", self.quiet)
            return {"stopped": True, "epoch": state.epoch}
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        """Evaluate the best checkpoint's weights, plot, write summary.json."""
        names = self.config.targets.names
        # DDP keeps the replicas equal; checked here, since a desync would silently corrupt results.
        digests = all_gather_objects(self.ctx, weights_digest(self.model))
        if len(set(digests)) > 1:
            warnings.warn(f"the {self.ctx.world_size} processes ended with different weights", stacklevel=2)
        barrier(self.ctx)  # rank 0 has finished writing best.pt
        best = self.out / "best.pt"
        if best.exists():
            load_weights(self.model, load_checkpoint(best), best)
        report, series = self.validate()
        summary = {"epochs": self.state.epoch, "best_epoch": self.state.best_epoch,
                   "val_loss": split_loss(self.args.loss, series), "val": report["overall"],
                   "val_postprocessed": report["postprocessed"]["overall"], "val_videos": report["videos"],
                   "rank_weight_digests": digests, "history": self.state.history}
        if self.ctx.is_main:
            self.log.close()
            plot_learning_curves(self.state.history, names, self.out / "learning_curves.png")
            shown = dict(list(series.items())[: self.args.plot_videos])
            if shown:
                plot_series({v: {"x": np.arange(len(s.pred)), "pred": s.pred, "labels": s.labels, "mask": s.mask,
                                 "ccc": report["videos"].get(v)} for v, s in shown.items()},
                            names, self.out / "val_predictions.png",
                            ylim=(self.config.targets.low, self.config.targets.high))
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            say(f"best epoch {self.state.best_epoch}: val CCC {format_ccc(report['overall'], names)}; "
                f"wrote {self.out}", self.args.quiet)
        return summary


