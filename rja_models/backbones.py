"""Per-clip feature extractors (paper §3.B): ResNet-18 on log-mel spectrograms for audio, R3D-18
with audio-guided spatial attention pooling for video. Random init; nothing is ever downloaded."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.video import r3d_18

# Kinetics-400 statistics that torchvision's R3D-18 weights were trained with.
_KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
_KINETICS_STD = (0.22803, 0.22145, 0.216989)
# Wrappers that training scripts put around a state dict's keys (DataParallel, torch.compile).
_KEY_PREFIXES = ("module.", "_orig_mod.")
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


class AudioEncoder(nn.Module):
    """Raw waveform of each clip -> log-mel spectrogram -> ResNet-18 (one input channel) -> 512."""

    out_features = 512

    def __init__(self, sample_rate: int, n_mels: int, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80.0)
        self.net = resnet18(weights=None)
        self.net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.net.fc = nn.Identity()

    def forward(self, audio: Tensor) -> Tensor:
        """`audio [N, S]` -> `[N, 512]`."""
        # The spectrogram stays in float32 under autocast: the power spectrum overflows float16.
        with torch.autocast(audio.device.type, enabled=False):
            spec = self.to_db(self.melspec(audio.float()))  # [N, n_mels, frames]
            # Per-clip standardisation makes the features independent of recording gain.
            mean = spec.mean(dim=(-2, -1), keepdim=True)
            std = spec.std(dim=(-2, -1), keepdim=True)
            spec = (spec - mean) / (std + 1e-5)
        return self.net(spec.unsqueeze(1))


class AudioGuidedPooling(nn.Module):
    """Reduce a clip's spatial map `[N, C, h, w]` to `[N, C]` with an additive attention over the
    h*w positions conditioned on the clip's audio feature (paper §3.B, after Tian et al.'s
    audio-guided visual attention): `softmax_p(w^T tanh(U_v v_p + U_a a))`."""

    def __init__(self, visual_dim: int, audio_dim: int, hidden: int) -> None:
        super().__init__()
        self.visual_proj = nn.Linear(visual_dim, hidden, bias=False)
        self.audio_proj = nn.Linear(audio_dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, fmap: Tensor, audio: Tensor) -> Tensor:
        positions = fmap.flatten(2).mT  # [N, h*w, C]; any map size works (7x7 at 112x112 input)
        hidden = torch.tanh(self.visual_proj(positions) + self.audio_proj(audio).unsqueeze(1))
        weights = torch.softmax(self.score(hidden), dim=1)  # [N, h*w, 1]
        return (weights * positions).sum(dim=1)


class VisualEncoder(nn.Module):
    """Frames of each clip `[N, 3, F, H, W]` in [0, 1] -> R3D-18 up to layer4 -> mean over time ->
    spatial pooling (audio-guided or average) -> 512."""

    out_features = 512

    def __init__(self, pooling: str, audio_dim: int, pooling_hidden: int) -> None:
        super().__init__()
        self.net = r3d_18(weights=None)
        # Keep torchvision's module names (so its state dicts load) but drop the pooling and classifier.
        del self.net.avgpool, self.net.fc
        self.register_buffer("mean", torch.tensor(_KINETICS_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_KINETICS_STD).view(1, 3, 1, 1, 1), persistent=False)
        self.pool = AudioGuidedPooling(self.out_features, audio_dim, pooling_hidden) if pooling == "audio_guided" \
            else None

    def forward(self, frames: Tensor, audio_features: Tensor | None = None) -> Tensor:
        x = self.net.stem((frames - self.mean) / self.std)
        for layer in (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4):
            x = layer(x)
        fmap = x.mean(dim=2)  # [N, 512, h, w]: average over the t' time steps
        if self.pool is None:
            return fmap.mean(dim=(-2, -1))
        if audio_features is None:
            raise ValueError("audio-guided pooling needs the audio features of the same clips")
        return self.pool(fmap, audio_features)


def _unwrap_state_dict(obj: object, path: str | Path) -> dict[str, Tensor]:
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors (got {type(obj).__name__})")
    return obj


def load_backbone_weights(module: nn.Module, path: str | Path, prefix: str = "") -> tuple[list[str], list[str]]:
    """Load a local state dict into `module` non-strictly and report what did not match.

    The file is read with `torch.load(weights_only=True)`; a dict nested under "state_dict",
    "model_state_dict" or "model" is unwrapped, and "module."/"_orig_mod." key prefixes are removed.
    With `prefix`, only keys starting with it are taken, with it removed (e.g. "audio_model." for a
    checkpoint holding several networks). A checkpoint conv weight with 3 input channels where the
    module has 1 (ImageNet ResNet-18 into the spectrogram ResNet) is summed over its channels, the
    usual adaptation. Other shape mismatches are not loaded and count as missing and unexpected.

    Returns `(missing, unexpected)`: keys of the module left at their initial values, and keys of
    the file that were not used; a warning lists them when any is non-empty.
    """
    state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        for p in _KEY_PREFIXES:
            key = key.removeprefix(p)
        if key.startswith(prefix):
            cleaned[key[len(prefix):]] = value
    own = module.state_dict()
    mismatched = []
    for key, value in list(cleaned.items()):
        if key not in own or own[key].shape == value.shape:
            continue
        target = own[key].shape
        if value.dim() == 4 and target[1] == 1 and value.shape[0] == target[0] and value.shape[2:] == target[2:]:
            cleaned[key] = value.sum(dim=1, keepdim=True)
        else:
            mismatched.append(f"{key} (file {list(value.shape)}, module {list(target)})")
            del cleaned[key]
    result = module.load_state_dict(cleaned, strict=False)
    missing = sorted(result.missing_keys)
    unexpected = sorted(set(result.unexpected_keys) | {m.split(" ")[0] for m in mismatched})
    if missing or unexpected or mismatched:
        message = (f"loading {path} into {type(module).__name__}: {len(missing)} missing keys {missing}, "
                   f"{len(unexpected)} unexpected keys {unexpected}"
                   + (f"; shape mismatches not loaded: {mismatched}" if mismatched else ""))
        warnings.warn(message, stacklevel=2)
    return missing, unexpected
