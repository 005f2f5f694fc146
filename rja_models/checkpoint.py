"""Checkpoints that rebuild the model on their own: weights, the config as a plain dict, and optionally
optimizer/scheduler state and caller extras. Written atomically (with the user's umask), read with
`weights_only=True`; a file that is not a readable checkpoint raises `CheckpointError`, whose message
names the file and says what is wrong (truncated, not a checkpoint, code objects refused, ...)."""

from __future__ import annotations

import os
import random
import re
import secrets
import sys
import warnings
import zipfile
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
# The entries every checkpoint has; "config" is `ModelConfig.to_dict()`, which records the fusion form
# ("rja": the paper's, "jca", ...) with every other switch, so the file alone rebuilds the model.
REQUIRED_KEYS = ("config", "model")
# What `--resume` needs on top (last.pt has them; best.pt, written for inference, does not).
RESUME_KEYS = ("optimizer", "scheduler", "extra")


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this code; the message names the file and says why."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


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
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # Mode 0o666 under the user's umask, as for any file they write (mkstemp would make it 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
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


def read_torch_file(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)`, with every way the file can be wrong as a `CheckpointError`
    that says which: unreadable, empty or truncated, not written by `torch.save`, or holding code
    objects (pickled references to Python callables, which weights_only refuses to run)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except IsADirectoryError:
        raise CheckpointError(path, "is a folder, not a file") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    if not head:
        raise CheckpointError(path, "is empty (truncated?)")
    is_zip = head == b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(path, "is truncated (its zip archive has no end): was it written or copied completely?")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except Exception as e:  # torch raises many types (RuntimeError, UnpicklingError, KeyError, EOFError)
        refused = re.search(r"GLOBAL (\S+)", str(e))
        if refused:
            raise CheckpointError(path, f"contains code objects ({refused.group(1)}) and was refused: only "
                                        "weights are read from a file, never code") from None
        if is_zip:
            raise CheckpointError(path, f"is corrupt or not a PyTorch file ({_first_line(e)})") from None
        raise CheckpointError(path, "is not a checkpoint (not a file written by torch.save)") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's dict, read with `torch.load(weights_only=True)`; `CheckpointError` if it is not one."""
    ckpt = read_torch_file(path, map_location)
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"is not an rja_models checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(path, f"is not an rja_models checkpoint (no {'/'.join(repr(k) for k in missing)} "
                                    f"entries; it has {sorted(map(str, ckpt))[:8]})")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(path, f"was written by an incompatible (newer) version of rja_models: checkpoint "
                                    f"format {version!r}, this code reads up to {FORMAT_VERSION}")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise CheckpointError(path, "is not an rja_models checkpoint ('config' and 'model' are not dicts)")
    if version < 2 and ckpt["config"].get("fusion") == "rja":
        ckpt["config"] = {**ckpt["config"], "fusion": "jca"}
        print(f"note: {path} was written by rja 0.1, whose fusion 'rja' was the JCA form: loading it as "
              "fusion='jca' (the paper's form is fusion='rja' now)", file=sys.stderr)
    return ckpt


def check_weights_file(path: str | Path) -> None:
    """Raise `CheckpointError` unless `path` reads as a state dict of tensors (at its top or one level
    down, e.g. under "state_dict" or "model"); memory-mapped, so checking a large file is cheap."""
    state = read_torch_file(path, mmap=True)
    tables = [state, *state.values()] if isinstance(state, dict) else []
    if not any(isinstance(t, dict) and any(isinstance(v, torch.Tensor) for v in t.values()) for t in tables):
        raise CheckpointError(path, f"holds no state dict of tensors (it holds a {type(state).__name__})")


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                          ) -> tuple[RJAModel, ModelConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint alone: `(model in eval mode, config, checkpoint dict)`."""
    ckpt = load_checkpoint(path, map_location)
    config = checkpoint_config(ckpt, path)
    # Every weight comes from the checkpoint, so the backbone files need not exist here.
    model = RJAModel(replace(config, audio_backbone_weights=None, visual_backbone_weights=None))
    model.config = config
    load_weights(model, ckpt, path)
    return model.to(map_location).eval(), config, ckpt


def checkpoint_config(ckpt: dict[str, Any], path: str | Path) -> ModelConfig:
    """The checkpoint's model config; `CheckpointError` if this code cannot read it."""
    try:
        return ModelConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(path, f"was written by an incompatible version of rja_models: its model config "
                                    f"is not valid here ({e})") from None


def load_weights(model: nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """Load the checkpoint's weights into `model`; `CheckpointError` if they are not this model's."""
    try:
        _unwrap(model).load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing/unexpected keys or shapes: the weights are not of this config's model
        raise CheckpointError(path, f"its weights do not fit the model ({_first_line(e, skip=1)})") from None


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


def _first_line(error: Exception, skip: int = 0) -> str:
    # torch's messages run over many lines; the first (after `skip` headers) says what went wrong.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    line = lines[min(skip, len(lines) - 1)].rstrip(".")
    return line if len(line) <= 300 else line[:300] + "..."


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
