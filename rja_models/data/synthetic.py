"""A synthetic audio-visual emotion data set written as real files in the Aff-Wild2 layout.

Smooth random valence/arousal curves drive both modalities, each modality seeing them through its
own smooth noise and with different strengths, so that neither modality alone recovers both targets
and fusing them helps:

* visual (a drawn face): mouth curvature and eye opening follow valence (strong cue); the head's
  motion speed and the image brightness follow arousal (weak cue);
* audio (a voice-like harmonic tone with a syllable envelope): loudness and syllable rate follow
  arousal (strong cue); pitch follows valence (weak cue).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

MARKER = ".complete"
"""Written last into the root with the generation parameters: its presence means a complete tree."""

_SPLITS = {"train": "Train_Set", "val": "Validation_Set"}


def write_av_file(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    fps: float | Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    frame_pts: Sequence[int] | None = None,
    codec: str = "libx264",
) -> None:
    """Encode uint8 [H, W, 3] frames (H, W even) and optional mono float audio in [-1, 1] into a file.

    Args:
        fps: nominal frame rate; 29.97 style rates are stored exactly (30000/1001).
        frame_pts: presentation time of each frame in frames (units of 1/fps); gaps drop frames.
            Default 0, 1, 2, ...
        codec: "libx264" (H.264) or "mpeg4"; the audio is AAC.
    """
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        video = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        for i, image in enumerate(frames):
            if video is None:
                video = container.add_stream(codec, rate=rate)
                video.height, video.width = image.shape[:2]
                video.pix_fmt = "yuv420p"
                video.time_base = 1 / rate
                # One encoder thread: the automatic count follows the machine's cores, and the number of
                # slices or frame threads changes the bitstream.
                video.codec_context.thread_count = 1
                if codec == "libx264":
                    # cpu-independent: x264's CPU-specific 9-mode intra search (its AVX-512 version reads
                    # uninitialised memory, so two encodes in one process could differ) is replaced by the
                    # canonical search, which gives the same bits as x264 without assembly.
                    video.options = {"preset": "veryfast", "crf": "18", "x264-params": "cpu-independent=1"}
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(image), format="yuv420p")
            frame.pts = i if frame_pts is None else int(frame_pts[i])
            container.mux(video.encode(frame))
        if video is None:
            raise ValueError("write_av_file needs at least one frame")
        container.mux(video.encode())
        if audio is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
            block = sound.codec_context.frame_size or 1024  # AAC takes fixed-size frames
            for start in range(0, len(samples), block):
                chunk = av.AudioFrame.from_ndarray(samples[None, start : start + block], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = sample_rate, start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())


def rgb_to_yuv420p(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB (H, W even) to uint8 [H * 3 / 2, W] planar YUV 4:2:0, BT.601 limited range.

    Done here in integer arithmetic rather than by libswscale, whose result depends on the CPU's
    instruction set, so that the encoder sees the same pixels on every machine.
    """
    rgb = np.asarray(image, dtype=np.int32)
    h, w = rgb.shape[:2]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or h % 2 or w % 2:
        raise ValueError(f"expected an [H, W, 3] image with even H and W, got shape {rgb.shape}")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    # Chroma of each 2x2 block from its mean colour (sum of four, hence the extra >> 2 below).
    quad = rgb.reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))
    r4, g4, b4 = quad[..., 0], quad[..., 1], quad[..., 2]
    u = ((-38 * r4 - 74 * g4 + 112 * b4 + 512) >> 10) + 128
    v = ((112 * r4 - 94 * g4 - 18 * b4 + 512) >> 10) + 128
    planes = [y.reshape(-1), u.reshape(-1), v.reshape(-1)]
    return np.clip(np.concatenate(planes), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def _smooth_curve(rng: np.random.Generator, n: int, fps: float, max_hz: float) -> np.ndarray:
    """A smooth random curve in (-1, 1): a few slow sinusoids through tanh."""
    t = np.arange(n) / fps
    k = 4
    freqs = rng.uniform(0.03, max_hz, k)
    phases = rng.uniform(0, 2 * np.pi, k)
    amps = rng.normal(0.0, 1.0, k) * math.sqrt(2.0 / k)
    return np.tanh(1.2 * (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0))


def _cues(rng: np.random.Generator, valence: np.ndarray, arousal: np.ndarray, fps: float) -> dict[str, np.ndarray]:
    """What each modality shows: its strong target with a little noise, its weak one with much."""
    n = len(valence)

    def seen(strength: float, target: np.ndarray, noise: float) -> np.ndarray:
        return np.clip(strength * target + noise * _smooth_curve(rng, n, fps, max_hz=0.8), -1.0, 1.0)

    return {
        "vis_valence": seen(1.0, valence, 0.5),
        "vis_arousal": seen(0.6, arousal, 0.5),
        "aud_arousal": seen(1.0, arousal, 0.5),
        "aud_valence": seen(0.6, valence, 0.5),
    }


def _draw_faces(rng: np.random.Generator, cues: dict[str, np.ndarray], fps: float, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: a drawn face per frame."""
    n = len(cues["vis_valence"])
    # Head oscillation whose speed (0.3 .. 1.5 Hz) follows arousal: integrate the frequency.
    phase = np.cumsum(2 * np.pi * (0.3 + 0.6 * (cues["vis_arousal"] + 1)) / fps) + rng.uniform(0, 2 * np.pi)
    dx, dy = 0.07 * size * np.sin(phase), 0.04 * size * np.sin(2 * phase)
    brightness = 0.65 + 0.3 * cues["vis_arousal"]
    skin = np.array([225, 185, 150]) * rng.uniform(0.8, 1.0, 3)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    s = size
    for i in range(n):
        image = Image.new("RGB", (s, s), tuple(int(60 * brightness[i]) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        cx, cy = s / 2 + dx[i], s / 2 + dy[i]
        draw.ellipse(
            (cx - 0.32 * s, cy - 0.42 * s, cx + 0.32 * s, cy + 0.42 * s), fill=tuple((skin * brightness[i]).astype(int))
        )
        openness = 0.015 * s + 0.05 * s * (cues["vis_valence"][i] + 1) / 2
        for side in (-1, 1):
            ex, ey = cx + side * 0.14 * s, cy - 0.1 * s
            draw.ellipse((ex - 0.06 * s, ey - openness, ex + 0.06 * s, ey + openness), fill=(30, 30, 40))
        # Smile: mouth corners up (center lower) for positive valence.
        xs = np.linspace(-1, 1, 9)
        ys = cy + 0.2 * s + cues["vis_valence"][i] * 0.08 * s * (1 - xs**2)
        draw.line(list(zip(cx + 0.17 * s * xs, ys)), fill=(120, 20, 30), width=max(2, s // 28))
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, (s, s, 3))
        out[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


def _voice(
    rng: np.random.Generator,
    cues: dict[str, np.ndarray],
    fps: float,
    sample_rate: int,
    num_samples: int,
    base_hz: float,
) -> np.ndarray:
    """float32 [num_samples]: a harmonic tone with a syllable envelope driven by the audio cues."""
    t = np.arange(num_samples) / sample_rate
    frame_t = np.arange(len(cues["aud_valence"])) / fps
    valence = np.interp(t, frame_t, cues["aud_valence"])
    arousal = np.interp(t, frame_t, cues["aud_arousal"])
    pitch = base_hz * 2.0 ** (0.5 * valence)  # +- half an octave
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 5))
    syllables = np.cumsum(2.0 + 1.5 * (arousal + 1)) / sample_rate + rng.uniform()  # 2 .. 5 per second
    envelope = np.sin(np.pi * (syllables % 1.0)) ** 2
    loudness = 0.06 + 0.2 * (arousal + 1) / 2
    return (loudness * envelope * tone).astype(np.float32)


def _write_annotation(path: Path, valence: np.ndarray, arousal: np.ndarray, invalid: np.ndarray) -> None:
    lines = ["valence,arousal"]
    lines += ["-5,-5" if bad else f"{v:.4f},{a:.4f}" for v, a, bad in zip(valence, arousal, invalid)]
    path.write_text("\n".join(lines) + "\n")


def generate_synthetic_dataset(
    root: str | Path,
    *,
    num_videos: int = 12,
    seconds: float = 6.0,
    fps: float = 15.0,
    val_fraction: float = 0.25,
    seed: int = 0,
    image_size: int = 112,
    sample_rate: int = 16000,
    two_person: bool = True,
    progress: bool = True,
) -> Path:
    """Write a synthetic Aff-Wild2-layout data set under ``root`` and return ``root``.

    Layout: ``videos/<name>.mp4`` (H.264 + AAC, the file that carries the audio),
    ``cropped_aligned/<name>/<NNNNN>.jpg`` (1-based frame index), and
    ``VA_Estimation_Challenge/{Train_Set,Validation_Set}/<name>.txt`` (``valence,arousal`` header,
    one line per frame, ``-5,-5`` for invalid frames). ``num_videos`` counts video files; with
    ``two_person`` the first one shows two faces side by side, annotated as ``synth_000_left`` and
    ``synth_000_right`` (they share ``synth_000.mp4`` and its audio, a mix of both voices). Each
    annotated sequence has one run of 4 frames labelled -5 and 2 frames without a crop. The last
    ``round(num_videos * val_fraction)`` videos form the validation split.

    The same arguments give the same files. ``root/.complete`` (the arguments as JSON) is written
    last; when it already matches, nothing is regenerated.
    """
    root = Path(root)
    params = {
        "num_videos": num_videos,
        "seconds": seconds,
        "fps": fps,
        "val_fraction": val_fraction,
        "seed": seed,
        "image_size": image_size,
        "sample_rate": sample_rate,
        "two_person": two_person,
        "format": 2,  # 2: encoded bit-exactly (cpu-independent x264, one thread, own RGB -> YUV)
    }
    marker = root / MARKER
    if marker.exists() and json.loads(marker.read_text()) == params:
        return root
    marker.unlink(missing_ok=True)
    for folder in ("videos", *(f"VA_Estimation_Challenge/{s}" for s in _SPLITS.values())):
        (root / folder).mkdir(parents=True, exist_ok=True)
    n = round(seconds * fps)
    num_samples = round(n / fps * sample_rate)
    num_val = round(num_videos * val_fraction)
    for i in tqdm(range(num_videos), desc="synthetic videos", disable=not progress):
        rng = np.random.default_rng([seed, i])
        name = f"synth_{i:03d}"
        split = _SPLITS["val" if i >= num_videos - num_val else "train"]
        people = ["_left", "_right"] if two_person and i == 0 else [""]
        faces, voices = [], []
        for person_index, person in enumerate(people):
            valence = _smooth_curve(rng, n, fps, max_hz=0.25)
            arousal = _smooth_curve(rng, n, fps, max_hz=0.25)
            cues = _cues(rng, valence, arousal, fps)
            face = _draw_faces(rng, cues, fps, image_size)
            faces.append(face)
            voices.append(_voice(rng, cues, fps, sample_rate, num_samples, base_hz=140.0 * 1.5**person_index))
            invalid = np.zeros(n, dtype=bool)
            run = int(rng.integers(0, n - 4))
            invalid[run : run + 4] = True
            missing = set(rng.choice(n, size=2, replace=False).tolist())
            crops = root / "cropped_aligned" / (name + person)
            crops.mkdir(parents=True, exist_ok=True)
            for f in range(n):
                if f not in missing:
                    Image.fromarray(face[f]).save(crops / f"{f + 1:05d}.jpg", quality=92)
            _write_annotation(
                root / "VA_Estimation_Challenge" / split / f"{name}{person}.txt", valence, arousal, invalid
            )
        audio = sum(voices) / len(voices) + rng.normal(0.0, 0.01, num_samples)
        write_av_file(
            root / "videos" / f"{name}.mp4",
            np.concatenate(faces, axis=2),
            fps=fps,
            audio=audio,
            sample_rate=sample_rate,
        )
    marker.write_text(json.dumps(params))
    return root
