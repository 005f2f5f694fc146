"""Checkpoints that rebuild the model on their own: weights, the config as a plain dict, and optionally
optimizer/scheduler state and caller extras. Written atomically, read with `weights_only=True`."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rja_models.config import ModelConfig
from rja_models.model import RJAModel

# 2: fusion="rja" is the paper's form (rja 0.2). In version 1 it named the JCA form, now fusion="jca".
FORMAT_VERSION = 2


def save_checkpoint(path: str | Path, model: RJAModel, config: ModelConfig | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write `{"format_version", "config", "model", "optimizer"?, "scheduler"?, "extra"?}` to `path`.

    `config` defaults to `model.config`. `extra` must hold only what `torch.load(weights_only=True)`
    reads back: tensors, numbers, strings, bools, None and lists/tuples/dicts of these (e.g. epoch,
    best score, `capture_rng_state()`). The file is written to a temporary file in the same
    directory, fsynced and renamed over `path`, so a crash never leaves a truncated checkpoint.
    """
    config = _unwrap(model).config if config is None else config
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "model": _unwrap(model).state_dict(),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    if extra is not None:
        payload["extra"] = extra
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's dict, read with `torch.load(weights_only=True)`."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not an rja_models checkpoint (no 'config'/'model' entries)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {ckpt['format_version']}, newer than this code "
                         f"({FORMAT_VERSION})")
    if ckpt.get("format_version", 0) < 2 and ckpt["config"].get("fusion") == "rja":
        ckpt["config"] = {**ckpt["config"], "fusion": "jca"}
        print(f"note: {path} was written by rja 0.1, whose fusion 'rja' was the JCA form: loading it as "
              "fusion='jca' (the paper's form is fusion='rja' now)", file=sys.stderr)
    return ckpt


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                          ) -> tuple[RJAModel, ModelConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint alone: `(model in eval mode, config, checkpoint dict)`."""
    ckpt = load_checkpoint(path, map_location)
    config = ModelConfig.from_dict(ckpt["config"])
    # Every weight comes from the checkpoint, so the backbone files need not exist here.
    model = RJAModel(replace(config, audio_backbone_weights=None, visual_backbone_weights=None))
    model.config = config
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), config, ckpt


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) RNG states, as weights_only-safe types."""
    np_state = np.random.get_state()
    return {
        "python": _to_lists(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(model: nn.Module) -> nn.Module:
    # DataParallel/DDP and torch.compile wrap the model; the checkpoint stores the bare module's keys.
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
