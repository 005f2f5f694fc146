"""Per-epoch metrics: JSON lines (`metrics.jsonl`), TensorBoard when it imports, and the console."""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm


def progress_enabled(quiet: bool, is_main: bool) -> bool:
    """Progress bars only on rank 0, on a terminal, without --quiet."""
    return is_main and not quiet and sys.stderr.isatty()


def say(message: str, quiet: bool = False) -> None:
    """Print a line without breaking an active tqdm bar."""
    if not quiet:
        tqdm.write(message)


def format_ccc(values: dict[str, float], names: Sequence[str]) -> str:
    return " ".join(f"{k} {values[k]:.4f}" for k in [*names, "mean"])


class MetricsLog:
    """Appends one JSON object per epoch; on a resumed run, first rewrites the file from the
    checkpoint's history, so an epoch logged after the last checkpoint (then killed) is not doubled."""

    def __init__(self, out: Path, history: Sequence[dict[str, Any]], tensorboard: bool) -> None:
        self.path = out / "metrics.jsonl"
        self.path.write_text("".join(json.dumps(h) + "\n" for h in history))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                _note_no_tensorboard()
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.writer = SummaryWriter(out / "tensorboard", purge_step=len(history) + 1)

    def log(self, entry: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.writer is not None:
            step = entry["epoch"]
            self.writer.add_scalar("train/loss", entry["train_loss"], step)
            self.writer.add_scalar("train/lr", entry["lr"], step)
            self.writer.add_scalar("val/loss", entry["val_loss"], step)
            for split in ("train", "val"):
                for key, value in entry[split].items():
                    self.writer.add_scalar(f"{split}/ccc_{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@functools.cache  # once per process, however many runs it makes (ablate trains one per variant)
def _note_no_tensorboard() -> None:
    print("note: TensorBoard is not installed, so no event files are written (metrics.jsonl has every value); "
          "`pip install tensorboard` to get them, or pass --no-tensorboard to silence this", file=sys.stderr)
