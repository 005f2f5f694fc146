"""The model that predict and live run: a checkpoint loaded for inference from raw video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rja_models.checkpoint import model_from_checkpoint
from rja_models.cli import UsageError
from rja_models.config import ModelConfig
from rja_models.model import RJAModel
from rja_models.training.distributed import resolve_device
from rja_models.training.options import check_backend


def load_for_inference(checkpoint: Path, device: str, source: str
                       ) -> tuple[torch.device, RJAModel, ModelConfig, dict[str, Any]]:
    """`(device, model, config, checkpoint dict)` for `--checkpoint` on `--device`; a UsageError when
    its kernel backend cannot run there or it was trained on features (`source`: "video", "stream")."""
    resolved = resolve_device(device)
    model, config, ckpt = model_from_checkpoint(checkpoint, map_location=resolved)
    check_backend(config, resolved, source=f"--checkpoint {checkpoint}: its backend")
    if not config.use_backbones:
        raise UsageError(f"--checkpoint {checkpoint} was trained on precomputed features; predicting from a "
                         f"{source} needs a model with backbones")
    return resolved, model, config, ckpt
