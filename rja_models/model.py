"""The audio-visual emotion recognition model of Praveen et al. (ICASSP 2023): backbones, U-BLSTMs,
recursive joint attention, J-BLSTM and regression heads, with every Table-1 ablation a config switch.

Data flow for a batch of B sub-sequences of L clips of F frames:

    audio [B, L, S] --log-mel--> ResNet-18 --> xa [B, L, da] ----------------+
    frames [B, L, 3, F, H, W] --> R3D-18 --> audio-guided pooling --> xv [B, L, dv]
    xa, xv --U-BLSTM (per modality)--> fusion (rja | jca | released | concat | one modality) --> J-BLSTM
           --> head --> tanh scaled to [low, high] --> clip [B, L, n], frame [B, L*F, n]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rja_models.backbones import AudioEncoder, VisualEncoder, load_backbone_weights
from rja_models.config import ModelConfig
from rja_models.fusion import JointCrossAttention, RecursiveJointAttention, ReleasedJointAttention

__all__ = ["ModelConfig", "RJAModel", "RecursiveJointAttention", "load_backbone_weights"]


def _build_fusion(c: ModelConfig) -> nn.Module | None:
    """The attention block of `c.fusion`, or None for concatenation and the single modalities."""
    if c.fusion == "rja":
        return RecursiveJointAttention(c.clips, c.da, c.dv, c.iterations, c.shared_weights, c.h_tanh, c.out_relu,
                                       c.backend)
    if c.fusion == "jca":
        return JointCrossAttention(c.clips, c.da, c.dv, c.attention_hidden, c.iterations, c.shared_weights,
                                   c.backend)
    if c.fusion == "released":
        return ReleasedJointAttention(c.clips, c.da, c.dv, c.iterations, c.dropout)
    return None


class _BLSTM(nn.Module):
    """Bidirectional LSTM over the clips of a sub-sequence, `[B, L, in] -> [B, L, 2 * hidden]`."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_features, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]


class RJAModel(nn.Module):
    """See the module docstring. Build from a `ModelConfig`; `model.config` is the config used."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        # Feature size of each modality the fusion uses; every per-modality part is built from this.
        self.dims = {name: dim for name, dim, used in (("audio", c.da, c.uses_audio), ("visual", c.dv, c.uses_visual))
                     if used}
        self.audio_encoder: AudioEncoder | None = None
        self.visual_encoder: VisualEncoder | None = None
        if c.use_backbones:
            if c.uses_audio:
                self.audio_encoder = AudioEncoder(c.sample_rate, c.n_mels, c.n_fft, c.hop_length)
                if c.audio_backbone_weights:
                    load_backbone_weights(self.audio_encoder.net, c.audio_backbone_weights)
            if c.uses_visual:
                self.visual_encoder = VisualEncoder(c.visual_pooling, c.da, c.pooling_hidden)
                if c.visual_backbone_weights:
                    load_backbone_weights(self.visual_encoder.net, c.visual_backbone_weights)
        self.unimodal_blstm = nn.ModuleDict(
            {name: _BLSTM(dim, dim // 2) for name, dim in self.dims.items()} if c.unimodal_blstm else {})
        self.fusion = _build_fusion(c)
        joint_dim = sum(self.dims.values())
        self.joint_blstm = _BLSTM(joint_dim, c.lstm_hidden) if c.joint_blstm else None
        head_in = 2 * c.lstm_hidden if c.joint_blstm else joint_dim
        self.head = nn.Sequential(
            nn.Dropout(c.dropout), nn.Linear(head_in, c.head_hidden), nn.ReLU(),
            nn.Dropout(c.dropout), nn.Linear(c.head_hidden, c.targets.count))

    def encode(self, frames: Tensor | None, audio: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Per-clip backbone features `(xa [B, L, da], xv [B, L, dv])` of `frames [B, L, 3, F, H, W]`
        in [0, 1] and `audio [B, L, S]`; the modality a single-modality model does not use is None
        (and its input may be None). These are what `forward(xa=..., xv=...)` takes."""
        if not self.config.use_backbones:
            raise RuntimeError("this model was built with use_backbones=False and takes precomputed xa, xv")
        b, seq = self._check_raw(frames, audio)
        xa = xv = None
        audio_flat = None
        if self.audio_encoder is not None:
            audio_flat = self.audio_encoder(audio.flatten(0, 1))
            xa = audio_flat.view(b, seq, -1)
        if self.visual_encoder is not None:
            xv = self.visual_encoder(frames.flatten(0, 1), audio_flat).view(b, seq, -1)
        return xa, xv

    def forward(self, frames: Tensor | None = None, audio: Tensor | None = None, *,
                xa: Tensor | None = None, xv: Tensor | None = None) -> dict[str, Tensor]:
        """Predictions from raw clips (`frames`, `audio`, see `encode`) or from precomputed per-clip
        features (`xa [B, L, da]`, `xv [B, L, dv]`). Returns `{"clip": [B, L, n_targets],
        "frame": [B, L * clip_frames, n_targets]}` in `[targets.low, targets.high]`."""
        if xa is None and xv is None:
            xa, xv = self.encode(frames, audio)
        elif frames is not None or audio is not None:
            raise ValueError("pass either raw clips (frames, audio) or precomputed features (xa, xv), not both")
        feats = self._check_features({"audio": xa, "visual": xv})
        if self.unimodal_blstm:
            feats = {name: self.unimodal_blstm[name](x) for name, x in feats.items()}
        if self.fusion is not None:
            feats = dict(zip(feats, self.fusion(feats["audio"], feats["visual"])))
        joint = torch.cat(list(feats.values()), dim=-1)
        if self.joint_blstm is not None:
            joint = self.joint_blstm(joint)
        targets = self.config.targets
        mid, half = (targets.high + targets.low) / 2, (targets.high - targets.low) / 2
        clip = mid + half * torch.tanh(self.head(joint))
        return {"clip": clip, "frame": clip.repeat_interleave(self.config.clip_frames, dim=1)}

    def _check_raw(self, frames: Tensor | None, audio: Tensor | None) -> tuple[int, int]:
        c = self.config
        if self.audio_encoder is not None and (audio is None or audio.dim() != 3):
            raise ValueError(f"audio must be [B, L, S] raw waveform per clip, got "
                             f"{None if audio is None else list(audio.shape)}")
        if self.visual_encoder is not None and (
                frames is None or frames.dim() != 6 or frames.shape[2] != 3 or frames.shape[3] != c.clip_frames):
            raise ValueError(f"frames must be [B, L, 3, F={c.clip_frames}, H, W], got "
                             f"{None if frames is None else list(frames.shape)}")
        shapes = [t.shape[:2] for t in (audio, frames) if t is not None]
        if len(set(shapes)) != 1:
            raise ValueError(f"frames and audio must agree on [B, L], got {[list(s) for s in shapes]}")
        return shapes[0]

    def _check_features(self, feats: dict[str, Tensor | None]) -> dict[str, Tensor]:
        """The features this model uses, checked against the config: `[B, L, dim]` with one B and L,
        and L = config.clips for the recursive joint attention (its weights are [Tw, L, L])."""
        out = {}
        for name, dim in self.dims.items():
            x = feats[name]
            arg = "xa" if name == "audio" else "xv"
            if x is None or x.dim() != 3 or x.shape[-1] != dim:
                raise ValueError(f"{arg} must be [B, L, {dim}], got {None if x is None else list(x.shape)}")
            out[name] = x
        if len({x.shape[:2] for x in out.values()}) != 1:
            raise ValueError(f"xa and xv must agree on [B, L], got {[list(x.shape) for x in out.values()]}")
        seq = next(iter(out.values())).shape[1]
        if self.fusion is not None and seq != self.config.clips:
            raise ValueError(f"the {self.config.fusion} fusion was built for L = clips = {self.config.clips} "
                             f"clips, got L = {seq}")
        return out
