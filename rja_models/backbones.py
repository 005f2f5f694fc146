"""Per-clip feature extractors (paper §3.B): ResNet-18 on log-mel spectrograms for audio, R3D-18
with audio-guided spatial attention pooling for video. Random init; nothing is ever downloaded."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.video import r2plus1d_18, r3d_18

# Kinetics-400 statistics that torchvision's R3D-18 weights were trained with.
_KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
_KINETICS_STD = (0.22803, 0.22145, 0.216989)
# Wrappers that training scripts put around a state dict's keys (DataParallel, torch.compile).
_KEY_PREFIXES = ("module.", "_orig_mod.")
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


class AudioEncoder(nn.Module):
    """Raw waveform of each clip -> log-mel spectrogram -> ResNet-18 (one input channel) -> 512."""

    out_features = 512

    def __init__(self, sample_rate: int, n_mels: int, n_fft: int, hop_length: int, win_length: int | None = None,
                 spec_norm: str = "clip", spec_mean: float = -14.8, spec_std: float = 19.895) -> None:
        super().__init__()
        # Hann window of win_length (default n_fft) zero-padded to n_fft: the authors' 20 ms in a 1024 FFT.
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length or None, hop_length=hop_length, n_mels=n_mels)
        self.spec_norm, self.spec_mean, self.spec_std = spec_norm, spec_mean, spec_std
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80.0)
        self.net = resnet18(weights=None)
        self.net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.net.fc = nn.Identity()

    def forward(self, audio: Tensor) -> Tensor:
        """`audio [N, S]` -> `[N, 512]`."""
        # The spectrogram stays in float32 under autocast: the power spectrum overflows float16.
        with torch.autocast(audio.device.type, enabled=False):
            # [N, 1, n_mels, frames]: AmplitudeToDB's top_db floor is max - 80 dB over dims -3..-1, which
            # on [N, n_mels, frames] would be over the whole batch, making a clip's features depend on the
            # other clips in its batch (and differ between one process and N processes' shards).
            spec = self.to_db(self.melspec(audio.float()).unsqueeze(1))
            if self.spec_norm == "fixed":  # the authors' dataset-wide dB statistics
                spec = (spec - self.spec_mean) / self.spec_std
            else:  # per-clip standardisation makes the features independent of recording gain
                mean = spec.mean(dim=(-2, -1), keepdim=True)
                std = spec.std(dim=(-2, -1), keepdim=True)
                spec = (spec - mean) / (std + 1e-5)
        return self.net(spec)


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


class ReleasedPooling(nn.Module):
    """The authors' audio-guided pooling (`models/audguide_att.py`, after Tian et al.), over the `P`
    positions of an L2-normalised map `v` (their `F.normalize` of the flattened map) and an
    L2-normalised audio feature `a`: `z_p = w_h^T tanh(W_v relu(U_v v_p) + (W_g relu(U_a a))_p)`,
    `out = W_f sum_p softmax(z)_p v_p`. Their code reads the `[512, 7, 7]` map as `[49, 512]`
    (a reshape that mixes channels and positions); here positions are positions."""

    def __init__(self, visual_dim: int, audio_dim: int, positions: int, hidden: int) -> None:
        super().__init__()
        self.positions = positions
        self.visual_in = nn.Linear(visual_dim, visual_dim)  # their affine_video
        self.audio_in = nn.Linear(audio_dim, visual_dim)  # affine_audio
        self.visual_score = nn.Linear(visual_dim, hidden, bias=False)  # affine_v
        self.audio_score = nn.Linear(visual_dim, positions, bias=False)  # affine_g: one term per position
        self.score = nn.Linear(hidden, 1, bias=False)  # affine_h
        self.out = nn.Linear(visual_dim, visual_dim)  # affine_feat

    def forward(self, fmap: Tensor, audio: Tensor) -> Tensor:
        positions = F.normalize(fmap.flatten(1), dim=-1).view_as(fmap).flatten(2).mT  # [N, P, C]
        if positions.shape[1] != self.positions:
            raise ValueError(f"visual_pooling='released' was built for {self.positions} positions (from image_size), "
                             f"got a {list(fmap.shape[-2:])} map")
        v = torch.relu(self.visual_in(positions))
        a = torch.relu(self.audio_in(F.normalize(audio, dim=-1)))
        z = self.score(torch.tanh(self.visual_score(v) + self.audio_score(a).unsqueeze(-1))).squeeze(-1)
        return self.out((torch.softmax(z, dim=-1).unsqueeze(-1) * positions).sum(dim=1))


def map_positions(image_size: int) -> int:
    """Positions of the layer4 map of R3D-18 / R(2+1)D-18 for a square input (spatial stride 16)."""
    return math.ceil(image_size / 16) ** 2


class VisualEncoder(nn.Module):
    """Frames of each clip `[N, 3, F, H, W]` in [0, 1] -> R3D-18 (or R(2+1)D-18) up to layer4 -> mean over time ->
    spatial pooling (audio-guided or average) -> 512."""

    out_features = 512

    def __init__(self, pooling: str, audio_dim: int, pooling_hidden: int, backbone: str = "r3d_18",
                 image_size: int = 112) -> None:
        super().__init__()
        # r2plus1d_18: what the authors' code builds (the TSAV backbone); the paper names R3D.
        self.net = {"r3d_18": r3d_18, "r2plus1d_18": r2plus1d_18}[backbone](weights=None)
        # Keep torchvision's module names (so its state dicts load) but drop the pooling and classifier.
        del self.net.avgpool, self.net.fc
        self.register_buffer("mean", torch.tensor(_KINETICS_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_KINETICS_STD).view(1, 3, 1, 1, 1), persistent=False)
        self.pool = AudioGuidedPooling(self.out_features, audio_dim, pooling_hidden) if pooling == "audio_guided" \
            else None
        if pooling == "released":
            self.pool = ReleasedPooling(self.out_features, audio_dim, map_positions(image_size), pooling_hidden)

    def forward(self, frames: Tensor, audio_features: Tensor | None = None) -> Tensor:
        # Clips cut from [..., H, W, 3] frames (`to_clips`) are channels-last in memory; conv3d follows
        # its input's layout, so every conv weight's gradient would come out channels-last too: a copy
        # into the parameter's layout per step, and for the 1x1x1 downsample convs, whose two layouts
        # differ only in strides of size-1 dims, a gradient DDP has to copy into its mismatched bucket.
        x = self.net.stem(((frames - self.mean) / self.std).contiguous())
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
    usual adaptation; one with more than the module's 3 (TSAV's RGB + landmark stem) keeps its first
    3. Other shape mismatches are not loaded and count as missing and unexpected.

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
        elif (value.dim() == len(target) and value.dim() >= 4 and value.shape[1] > target[1] and target[1] == 3
              and value.shape[0] == target[0] and value.shape[2:] == target[2:]):
            # TSAV's visual stem takes RGB + a 4th (landmark) channel; the authors keep the RGB weights.
            cleaned[key] = value[:, :3].clone()
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
