"""Concordance correlation coefficient (CCC) as the ABAW challenges define it, the 1 - CCC training
loss, a streaming accumulator that evaluates over all valid frames of a split, and the authors'
post-processing (clip, then smooth per video) that their reported CCCs are computed after.

    CCC = 2 cov(p, t) / (var(p) + var(t) + (mean(p) - mean(t))^2)

with population (biased, 1/N) variances and covariance over all valid frames. Frames whose label
is `INVALID_LABEL` (-5 in Aff-Wild2) are always excluded, in addition to any explicit mask.
Tensors are `[..., n_targets]` (leading dims are frames) or 1-D for a single series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

INVALID_LABEL = -5.0
# The authors' post-processing before the CCC (their val.py/test.py): predictions clipped to [-1, 1],
# then a per-video moving average of 20 frames for valence and 50 for arousal
# (`scipy.ndimage.uniform_filter1d(..., mode="constant")`: zeros beyond the ends).
AUTHORS_SMOOTHING: dict[str, int] = {"valence": 20, "arousal": 50}


def valid_mask(labels: Tensor) -> Tensor:
    """Boolean mask, same shape as `labels`, False where the label is `INVALID_LABEL` (or NaN)."""
    return (labels != INVALID_LABEL) & ~torch.isnan(labels)


def _flatten(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """`[N, C]` views of pred and target and the combined `[N, C]` mask. A 1-D input is one target;
    a mask without the target dim applies to every target."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} must have one shape")
    if pred.dim() == 0:
        raise ValueError("pred and target need at least one dim (frames)")
    full = valid_mask(target)
    if mask is not None:
        if mask.shape == pred.shape[:-1] and pred.dim() > 1:
            mask = mask.unsqueeze(-1)
        elif mask.shape != pred.shape:
            raise ValueError(f"mask must have shape {list(pred.shape)} or {list(pred.shape[:-1])}, "
                             f"got {list(mask.shape)}")
        full = full & mask.bool()
    cols = pred.shape[-1] if pred.dim() > 1 else 1
    return pred.reshape(-1, cols), target.reshape(-1, cols), full.reshape(-1, cols)


def _ccc_from_moments(mean_p: Tensor, mean_t: Tensor, var_p: Tensor, var_t: Tensor, cov: Tensor,
                      eps: float) -> Tensor:
    return 2 * cov / (var_p + var_t + (mean_p - mean_t) ** 2 + eps)


def ccc(pred: Tensor, target: Tensor, mask: Tensor | None = None, eps: float = 0.0) -> Tensor:
    """CCC over all valid frames: a scalar for 1-D inputs, else one value per target (last dim).
    NaN for a target with no valid frame (or a 0/0 degenerate series when `eps` is 0).
    Differentiable; computed in at least float32."""
    one_series = pred.dim() == 1
    p, t, m = _flatten(pred, target, mask)
    dtype = torch.promote_types(p.dtype, torch.float32)
    p, t, m = p.to(dtype), t.to(dtype), m.to(dtype)
    p = torch.where(m.bool(), p, 0)  # excluded labels (-5) must not leak into the sums, even as 0 * x
    t = torch.where(m.bool(), t, 0)
    n = m.sum(0)
    mean_p, mean_t = p.sum(0) / n, t.sum(0) / n
    dp, dt = (p - mean_p) * m, (t - mean_t) * m
    value = _ccc_from_moments(mean_p, mean_t, (dp * dp).sum(0) / n, (dt * dt).sum(0) / n, (dp * dt).sum(0) / n, eps)
    return value[0] if one_series else value


def ccc_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None, eps: float = 1e-8,
             reduction: str = "mean") -> Tensor:
    """Training loss: `1 - CCC` per target, their mean (`reduction="mean"`) or sum (`"sum"`: the
    authors' `v_loss + a_loss`). Targets without valid frames in the batch are left out; if none has
    any, the loss is a zero that still has a graph."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    per_target = 1 - ccc(pred, target, mask, eps=eps).reshape(-1)
    finite = ~torch.isnan(per_target)
    if not finite.any():
        return pred.sum() * 0
    return per_target[finite].mean() if reduction == "mean" else per_target[finite].sum()


def moving_average(x: np.ndarray, size: int) -> np.ndarray:
    """Centred moving average of ``size`` along axis 0 with zeros beyond both ends, exactly
    `scipy.ndimage.uniform_filter1d(x, size, axis=0, mode="constant")`: ``out[i]`` is the mean of
    ``x[i - size // 2 : i - size // 2 + size]``. float64."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    x = np.asarray(x, dtype=np.float64)
    if size == 1 or len(x) == 0:
        return x.copy()
    before, after = size // 2, size - 1 - size // 2
    padded = np.concatenate([np.zeros((before, *x.shape[1:])), x, np.zeros((after, *x.shape[1:]))])
    sums = np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(padded, axis=0)])
    return (sums[size:] - sums[:-size]) / size


def postprocess(pred: np.ndarray, names: Sequence[str], low: float = -1.0, high: float = 1.0,
                windows: Mapping[str, int] = AUTHORS_SMOOTHING) -> np.ndarray:
    """One video's frame predictions ``[N, T]`` as the authors score them: clipped to ``[low, high]``,
    then `moving_average` per target over ``windows[name]`` frames (targets not in ``windows``: clipped
    only)."""
    clipped = np.clip(np.asarray(pred, dtype=np.float64), low, high)
    if clipped.ndim == 1:
        clipped = clipped[:, None]
    return np.stack([moving_average(clipped[:, j], windows.get(name, 1)) for j, name in enumerate(names)], axis=1)


class _Moments:
    """Running count, means and centered second moments per target (Chan et al.'s parallel update,
    in float64: stable where raw sums of squares would cancel)."""

    def __init__(self, cols: int) -> None:
        z = torch.zeros(cols, dtype=torch.float64)
        self.n, self.mean_p, self.mean_t, self.m2_p, self.m2_t, self.c = (z.clone() for _ in range(6))

    def update(self, p: Tensor, t: Tensor, m: Tensor) -> None:
        m = m.to(torch.float64)
        p, t = torch.where(m.bool(), p.double(), 0), torch.where(m.bool(), t.double(), 0)
        n_b = m.sum(0)
        safe = n_b.clamp(min=1)
        mean_p, mean_t = p.sum(0) / safe, t.sum(0) / safe
        dp, dt = (p - mean_p) * m, (t - mean_t) * m
        n = self.n + n_b
        frac = torch.where(n > 0, n_b / n.clamp(min=1), 0)
        delta_p, delta_t = mean_p - self.mean_p, mean_t - self.mean_t
        self.m2_p += (dp * dp).sum(0) + delta_p * delta_p * self.n * frac
        self.m2_t += (dt * dt).sum(0) + delta_t * delta_t * self.n * frac
        self.c += (dp * dt).sum(0) + delta_p * delta_t * self.n * frac
        self.mean_p += delta_p * frac
        self.mean_t += delta_t * frac
        self.n = n

    def ccc(self) -> Tensor:
        return _ccc_from_moments(self.mean_p, self.mean_t, self.m2_p / self.n, self.m2_t / self.n,
                                 self.c / self.n, 0.0)


class CCCAccumulator:
    """Streaming CCC over a whole split: `update` per batch, `compute` once at the end. The result is
    exactly `ccc` over the concatenation of every valid frame seen, not an average over batches.

    `update(pred, target, mask=None, videos=None)` takes `[B, N, C]` (or `[N, C]`) tensors; with
    `videos` (one id per row of the batch) it also keeps per-video statistics for
    `compute_per_video`. Each frame should be seen once (evaluate with non-overlapping windows).
    """

    def __init__(self, names: Sequence[str] = ("valence", "arousal")) -> None:
        self.names = tuple(names)
        self.reset()

    def reset(self) -> None:
        self._total = _Moments(len(self.names))
        self._videos: dict[str, _Moments] = {}

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None,
               videos: Sequence[str] | None = None) -> None:
        pred, target = pred.detach().cpu(), target.detach().cpu()
        mask = None if mask is None else mask.detach().cpu()
        if pred.shape[-1] != len(self.names):
            raise ValueError(f"pred has {pred.shape[-1]} targets in its last dim, expected {len(self.names)}")
        self._total.update(*_flatten(pred, target, mask))
        if videos is None:
            return
        if pred.dim() < 3 or len(videos) != pred.shape[0]:
            raise ValueError(f"videos needs one id per batch row of a [B, N, C] pred, got {len(videos)} ids "
                             f"for {list(pred.shape)}")
        for i, video in enumerate(videos):
            stats = self._videos.setdefault(str(video), _Moments(len(self.names)))
            stats.update(*_flatten(pred[i], target[i], None if mask is None else mask[i]))

    def _as_dict(self, values: Tensor) -> dict[str, float]:
        out = {name: float(v) for name, v in zip(self.names, values)}
        out["mean"] = float(values.mean())
        return out

    def compute(self) -> dict[str, float]:
        """`{target name: CCC, ..., "mean": mean over targets}` over all valid frames seen."""
        return self._as_dict(self._total.ccc())

    def compute_per_video(self) -> dict[str, dict[str, float]]:
        """The same per video id (only for updates given `videos`)."""
        return {video: self._as_dict(stats.ccc()) for video, stats in sorted(self._videos.items())}

    @property
    def frames(self) -> int:
        """Valid frames seen, counted for the first target."""
        return int(self._total.n[0])
