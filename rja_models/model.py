"""The audio-visual emotion recognition model of Praveen et al. (ICASSP 2023): backbones, U-BLSTMs,
recursive joint attention, J-BLSTM and regression heads, with every Table-1 ablation a config switch.

Data flow for a batch of B sub-sequences of L clips of F frames:

    audio [B, L, S] --log-mel--> ResNet-18 --> xa [B, L, da] ----------------+
    frames [B, L, 3, F, H, W] --> R3D-18 --> audio-guided pooling --> xv [B, L, dv]
    xa, xv --U-BLSTM (per modality)--> fusion (rja | jca | released | concat | one modality) --> J-BLSTM
           --> head(s) --> tanh scaled to [low, high] (or linear) --> clip [B, L, n], frame [B, L*F, n]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    """Bidirectional LSTM over the clips of a sub-sequence, `[B, L, in] -> [B, L, 2 * hidden]`.

    The defaults are one plain layer. The switches give the authors' `models/layer.py` LSTM: `layers`
    stacked with `dropout` between them; `residual`: `Linear(dropout([x, out]))` back to `2 * hidden`;
    `learned_init`: trained initial states `(h0, c0)` (Xavier-initialised); `l2norm`: unit-norm outputs.
    """

    def __init__(self, in_features: int, hidden: int, layers: int = 1, dropout: float = 0.0,
                 residual: bool = False, learned_init: bool = False, l2norm: bool = False) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_features, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0,
                            batch_first=True, bidirectional=True)
        self.l2norm = l2norm
        self.residual = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features + 2 * hidden, 2 * hidden)) \
            if residual else None
        # h0 and c0 of every (layer, direction): rows [0, 2 * layers) are h0, the rest c0.
        self.init_state = nn.Parameter(nn.init.xavier_uniform_(torch.empty(4 * layers, hidden))) \
            if learned_init else None

    def forward(self, x: Tensor) -> Tensor:
        state = None
        if self.init_state is not None:
            h0, c0 = self.init_state.to(x.dtype).unsqueeze(1).expand(-1, x.shape[0], -1).chunk(2, dim=0)
            state = (h0.contiguous(), c0.contiguous())
        out = self.lstm(x, state)[0]
        if self.residual is not None:
            out = self.residual(torch.cat([x, out], dim=-1))
        return F.normalize(out, dim=-1) if self.l2norm else out


class _Heads(nn.Module):
    """One regression head per target (the authors' separate valence and arousal heads): `[..., in] -> [..., n]`."""

    def __init__(self, heads: list[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)


def _head(c: ModelConfig, in_features: int, outputs: int) -> nn.Sequential:
    layers = [nn.Dropout(c.dropout)] if c.head_input_dropout else []
    return nn.Sequential(*layers, nn.Linear(in_features, c.head_hidden), nn.ReLU(), nn.Dropout(c.dropout),
                         nn.Linear(c.head_hidden, outputs))


def _xavier_linears(*modules: nn.Module | None) -> None:
    """The authors' `init_weights`: Xavier-uniform weights and zero biases for every Linear."""
    for module in modules:
        for m in module.modules() if module is not None else ():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


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
                self.audio_encoder = AudioEncoder(c.sample_rate, c.n_mels, c.n_fft, c.hop_length, c.win_length,
                                                  c.spec_norm, c.spec_mean, c.spec_std)
                if c.audio_backbone_weights:
                    load_backbone_weights(self.audio_encoder.net, c.audio_backbone_weights, c.audio_backbone_prefix)
            if c.uses_visual:
                self.visual_encoder = VisualEncoder(c.visual_pooling, c.da, c.pooling_hidden, c.visual_backbone,
                                                    c.image_size)
                if c.visual_backbone_weights:
                    load_backbone_weights(self.visual_encoder.net, c.visual_backbone_weights,
                                          c.visual_backbone_prefix)
        self._frozen = [enc.net for enc in (self.audio_encoder, self.visual_encoder)
                        if enc is not None and c.freeze_backbones]
        for net in self._frozen:
            net.requires_grad_(False)
        blstm = {"layers": c.blstm_layers, "residual": c.blstm_residual, "learned_init": c.blstm_learned_init,
                 "l2norm": c.blstm_l2norm}
        self.unimodal_blstm = nn.ModuleDict(
            {name: _BLSTM(dim, dim // 2, dropout=c.ublstm_dropout, **blstm) for name, dim in self.dims.items()}
            if c.unimodal_blstm else {})
        self.fusion = _build_fusion(c)
        joint_dim = sum(self.dims.values())
        self.joint_blstm = _BLSTM(joint_dim, c.lstm_hidden, dropout=c.jblstm_dropout, **blstm) \
            if c.joint_blstm else None
        head_in = 2 * c.lstm_hidden if c.joint_blstm else joint_dim
        if c.separate_heads:
            self.head: nn.Module = _Heads([_head(c, head_in, 1) for _ in range(c.targets.count)])
        else:
            self.head = _head(c, head_in, c.targets.count)
        if c.xavier_init:
            pool = self.visual_encoder.pool if self.visual_encoder is not None else None
            linears = [pool, self.unimodal_blstm, self.joint_blstm, self.head]
            _xavier_linears(*linears, self.fusion if c.fusion == "released" else None)

    def train(self, mode: bool = True) -> RJAModel:
        """As `nn.Module.train`, but frozen backbones stay in eval mode (BatchNorm keeps its statistics)."""
        super().train(mode)
        for net in self._frozen:
            net.eval()
        return self

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
        "frame": [B, L * config.rows_per_clip, n_targets]}` in `[targets.low, targets.high]` (unbounded
        with `output_activation="none"`)."""
        if xa is None and xv is None:
            xa, xv = self.encode(frames, audio)
        elif frames is not None or audio is not None:
            raise ValueError("pass either raw clips (frames, audio) or precomputed features (xa, xv), not both")
        feats = self._check_features({"audio": xa, "visual": xv})
        if self.config.feature_l2norm:  # the authors normalise each clip's backbone features first
            # (the released pooling normalised the visual map itself, as theirs, and its output is not)
            skip = "visual" if self.config.visual_pooling == "released" and self.config.use_backbones else None
            feats = {name: x if name == skip else F.normalize(x, dim=-1) for name, x in feats.items()}
        if self.unimodal_blstm:
            feats = {name: self.unimodal_blstm[name](x) for name, x in feats.items()}
        if self.fusion is not None:
            feats = dict(zip(feats, self.fusion(feats["audio"], feats["visual"])))
        joint = torch.cat(list(feats.values()), dim=-1)
        if self.joint_blstm is not None:
            joint = self.joint_blstm(joint)
        targets = self.config.targets
        clip = self.head(joint)
        if self.config.output_activation == "tanh":
            mid, half = (targets.high + targets.low) / 2, (targets.high - targets.low) / 2
            clip = mid + half * torch.tanh(clip)
        # One row per frame of each clip's span, or one per clip (label_frame="last": its last frame).
        return {"clip": clip, "frame": clip.repeat_interleave(self.config.rows_per_clip, dim=1)}

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
        if any(s != shapes[0] for s in shapes[1:]):  # compared, not hashed: symbolic under torch.export
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
        if any(x.shape[:2] != y.shape[:2] for x, y in zip(out.values(), list(out.values())[1:])):
            raise ValueError(f"xa and xv must agree on [B, L], got {[list(x.shape) for x in out.values()]}")
        seq = next(iter(out.values())).shape[1]
        if self.fusion is not None and seq != self.config.clips:
            raise ValueError(f"the {self.config.fusion} fusion was built for L = clips = {self.config.clips} "
                             f"clips, got L = {seq}")
        return out
