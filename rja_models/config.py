"""Typed configuration of the audio-visual model; stored as a plain dict inside every checkpoint.

`ABLATIONS` maps the variants of the paper's Table 1 and the baselines of its Table 3 to config
overrides, so each is a switch (`ModelConfig.ablation("blstms_t2")`), not a code edit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# rja: the paper's recursive joint attention (Eq. 1-6); jca: the JCA form of the authors' earlier papers;
# released: the block of the authors' released code (plain PyTorch); then the Table 3 baselines.
FUSIONS = ("rja", "jca", "released", "concat", "audio", "visual")
ATTENTION_FUSIONS = ("rja", "jca", "released")
POOLINGS = ("audio_guided", "avg", "released")  # released: the authors' audguide_att.py
# Choices of the options below that reproduce the authors' released experiment (docs/PAPER_SETUP.md).
VISUAL_BACKBONES = ("r3d_18", "r2plus1d_18")
SPEC_NORMS = ("clip", "fixed")
AUDIO_ANCHORS = ("start", "end")
WINDOW_LAYOUTS = ("strided", "tiled")
LABEL_FRAMES = ("all", "last")
OUTPUT_ACTIVATIONS = ("tanh", "none")
FIELD_CHOICES = {"fusion": FUSIONS, "visual_pooling": POOLINGS, "visual_backbone": VISUAL_BACKBONES,
                 "spec_norm": SPEC_NORMS, "audio_anchor": AUDIO_ANCHORS, "window_layout": WINDOW_LAYOUTS,
                 "label_frame": LABEL_FRAMES, "output_activation": OUTPUT_ACTIVATIONS}


@dataclass(frozen=True)
class TargetConfig:
    """The regression targets: their names (one output each) and the range outputs are squashed to."""

    names: tuple[str, ...] = ("valence", "arousal")
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        # Accept lists (JSON/YAML) but store a tuple so the config stays hashable and comparable.
        object.__setattr__(self, "names", tuple(self.names))
        if not self.names:
            raise ValueError("TargetConfig.names must name at least one target")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"TargetConfig.names must be unique, got {self.names}")
        if not self.low < self.high:
            raise ValueError(f"TargetConfig needs low < high, got low={self.low}, high={self.high}")

    @property
    def count(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class ModelConfig:
    """Every switch of `rja_models.model.RJAModel`. Sizes follow the paper (ResNet-18 audio and R3D-18
    visual features of 512, L clips of F frames, k = 32, T = 2)."""

    targets: TargetConfig = field(default_factory=TargetConfig)
    da: int = 512
    dv: int = 512
    clips: int = 8  # L: clips per sub-sequence; the fusion weights are [Tw, L, L], so L is fixed
    clip_frames: int = 8  # F: frames per clip; clip predictions are broadcast to these frames
    sample_rate: int = 16000
    n_mels: int = 64
    n_fft: int = 512
    hop_length: int = 160  # 10 ms at 16 kHz
    image_size: int = 112  # input size for the data pipeline; the model itself takes any size
    attention_hidden: int = 32  # k, of fusion="jca" only
    iterations: int = 2  # T
    shared_weights: bool = False  # True: one weight set for every iteration (Tw = 1), else Tw = T
    # fusion="rja": the two non-linearities the authors' released code adds to Eq. 1-6, on by default:
    # relu(tanh(G)) bounds the attention map, and the paper's unbounded relu(G) (--no-h-tanh
    # --no-out-relu) trains unstably at the CPU preset (README, Results).
    h_tanh: bool = True
    out_relu: bool = True  # fusion="rja": x + relu(U) as the released code, else the paper's x + U
    unimodal_blstm: bool = True
    joint_blstm: bool = True
    lstm_hidden: int = 256  # J-BLSTM hidden size per direction; the U-BLSTMs keep da/dv (da//2 per direction)
    head_hidden: int = 128
    pooling_hidden: int = 256  # hidden size of the audio-guided spatial attention
    fusion: str = "rja"
    backend: str = "auto"
    visual_pooling: str = "audio_guided"
    use_backbones: bool = True  # False: forward takes precomputed per-clip features xa, xv only
    audio_backbone_weights: str | None = None
    visual_backbone_weights: str | None = None
    dropout: float = 0.2
    # --- Windowing and audio front end (data pipeline; stored so evaluate/predict cut clips alike) ---
    frame_dilation: int = 1  # a clip samples every d-th frame: it spans clip_frames * d frames (authors: 8 of 32)
    window_layout: str = "strided"  # strided: every --train-stride frames; tiled: the authors' (each frame ends a clip)
    label_frame: str = "all"  # all: a clip's prediction is every frame's of its span; last: its last frame's only
    audio_seconds: float = 0.0  # audio per clip, seconds; 0: one clip span at the training data's usual frame rate
    audio_anchor: str = "start"  # start: the audio starts at the clip's first frame; end: ends at its last (authors)
    win_length: int = 0  # STFT window, samples; 0: n_fft
    spec_norm: str = "clip"  # clip: standardise each clip's log-mel; fixed: (dB - spec_mean) / spec_std (authors)
    spec_mean: float = -14.8  # the authors' dB statistics, for spec_norm="fixed"
    spec_std: float = 19.895
    color_jitter: float = 0.0  # training only: brightness and contrast factors in [1 - x, 1 + x] per clip
    # --- Backbones ---
    visual_backbone: str = "r3d_18"  # r2plus1d_18: the authors' code (torchvision's R(2+1)D-18, TSAV weights)
    freeze_backbones: bool = False  # the paper's "pre-trained networks": fixed weights, BatchNorm in eval mode
    audio_backbone_prefix: str = ""  # keys of the weights file to take, e.g. "audio_model.resnet." (TSAV)
    visual_backbone_prefix: str = ""  # e.g. "video_model.r2plus1d." (TSAV)
    # --- BLSTMs (the authors' `models/layer.py` LSTM: 2 layers, residual, learned h0/c0, L2-normalised) ---
    feature_l2norm: bool = False  # L2-normalise each clip's backbone features before the U-BLSTMs
    blstm_layers: int = 1
    blstm_residual: bool = False  # project [input, BLSTM output] back to the output size (a Linear)
    blstm_learned_init: bool = False  # learned initial hidden and cell states
    blstm_l2norm: bool = False  # L2-normalise every BLSTM output
    ublstm_dropout: float = 0.0  # between layers and before the residual projection (authors: 0.1)
    jblstm_dropout: float = 0.0  # the same for the J-BLSTM (authors: 0)
    # --- Heads ---
    separate_heads: bool = False  # one head per target (the authors' valence and arousal regressors)
    head_input_dropout: bool = True  # dropout before the head's first Linear too (the authors' have it after only)
    output_activation: str = "tanh"  # tanh: squashed to [low, high]; none: linear, clipped when scoring (authors)
    xavier_init: bool = False  # Xavier-uniform weights, zero biases for every Linear after the backbones (authors)

    @property
    def clip_span(self) -> int:
        """Frames one clip covers: clip_frames * frame_dilation."""
        return self.clip_frames * self.frame_dilation

    @property
    def rows_per_clip(self) -> int:
        """Frame-level prediction rows per clip: the clip span (label_frame="all") or 1 ("last")."""
        return self.clip_span if self.label_frame == "all" else 1

    def __post_init__(self) -> None:
        if isinstance(self.targets, dict):
            object.__setattr__(self, "targets", TargetConfig(**self.targets))
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.fusion == "released" and self.shared_weights:
            raise ValueError("fusion='released' has one weight set per iteration, as the authors' code; "
                             "shared_weights needs fusion='rja' or 'jca'")
        if self.visual_pooling not in POOLINGS:
            raise ValueError(f"visual_pooling must be one of {POOLINGS}, got {self.visual_pooling!r}")
        if self.visual_pooling != "avg" and not self.uses_audio and self.use_backbones:
            raise ValueError(f"visual_pooling={self.visual_pooling!r} needs the audio branch; use 'avg' with "
                             "fusion='visual'")
        for name in ("clips", "clip_frames", "sample_rate", "n_mels", "n_fft", "hop_length", "image_size",
                     "attention_hidden", "iterations", "lstm_hidden", "head_hidden", "pooling_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # The size of a modality the fusion does not use is not checked (its features may be empty).
        for name, used in (("da", self.uses_audio), ("dv", self.uses_visual)):
            size = getattr(self, name)
            if not used:
                continue
            if size < 1:
                raise ValueError(f"{name} must be >= 1, got {size}")
            if self.unimodal_blstm and size % 2:
                raise ValueError(f"the U-BLSTMs keep the feature size (d//2 per direction): {name}={size} must be even")
            if self.use_backbones and size != 512:
                raise ValueError(f"the ResNet-18 and R3D-18 backbones give 512 features; {name}={size} needs "
                                 "use_backbones=False")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, choices in FIELD_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("frame_dilation", "blstm_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("audio_seconds", "win_length", "color_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must be <= n_fft ({self.n_fft})")
        if not self.spec_std > 0:
            raise ValueError(f"spec_std must be > 0, got {self.spec_std}")
        if self.color_jitter >= 1:
            raise ValueError(f"color_jitter must be < 1 (a factor range [1 - x, 1 + x]), got {self.color_jitter}")
        for name in ("ublstm_dropout", "jblstm_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def uses_attention(self) -> bool:
        return self.fusion in ATTENTION_FUSIONS

    @property
    def uses_audio(self) -> bool:
        return self.fusion != "visual"

    @property
    def uses_visual(self) -> bool:
        return self.fusion != "audio"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); `from_dict` inverts it."""
        d = dataclasses.asdict(self)
        d["targets"]["names"] = list(self.targets.names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        return cls(**{**d, "targets": TargetConfig(**d["targets"]) if "targets" in d else TargetConfig()})

    def replace(self, **overrides: Any) -> ModelConfig:
        return dataclasses.replace(self, **overrides)

    @classmethod
    def ablation(cls, name: str, base: ModelConfig | None = None, **overrides: Any) -> ModelConfig:
        """`base` (default config if None) with the overrides of `ABLATIONS[name]`, then `overrides`."""
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; expected one of {sorted(ABLATIONS)}")
        return dataclasses.replace(base if base is not None else cls(), **{**ABLATIONS[name], **overrides})


def _blstms(unimodal: bool, joint: bool, iterations: int) -> dict[str, Any]:
    return {"fusion": "rja", "unimodal_blstm": unimodal, "joint_blstm": joint, "iterations": iterations}


ABLATIONS: dict[str, dict[str, Any]] = {
    # Table 1, "JA Fusion w/o Recursion" (t = 1)
    "no_ublstm_t1": _blstms(False, True, 1),
    "no_jblstm_t1": _blstms(True, False, 1),
    "blstms_t1": _blstms(True, True, 1),
    # Table 1, "JA Fusion w/ Recursion"
    "no_blstms_t2": _blstms(False, False, 2),
    "blstms_t2": _blstms(True, True, 2),  # the paper's best, equal to the default config
    "blstms_t3": _blstms(True, True, 3),
    "blstms_t4": _blstms(True, True, 4),
    # One weight set shared by both iterations (Tw = 1) instead of one per iteration
    "blstms_t2_shared": {**_blstms(True, True, 2), "shared_weights": True},
    # Baselines (paper's Table 3): single modalities and plain feature concatenation
    "audio_only": {"fusion": "audio"},
    "visual_only": {"fusion": "visual", "visual_pooling": "avg"},
    "concat": {"fusion": "concat"},
}
