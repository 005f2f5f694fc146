"""The face pipeline: find one subject's face in every frame and cut an aligned crop of it.

One implementation for `prepare` (crops for training), `predict` (crops for the model) and the live
mode (`FacePipeline.stream`, causal):

* detection: dlib's HOG frontal face detector on a grayscale copy of the frame downscaled to
  ``detect_width`` pixels (it finds faces of about 65 px and more in that copy: at the default
  480, ~90 px in a 640x480 frame, ~175 px in 1280x720), every ``detect_every`` frames, and on
  every frame while the subject is not found;
* landmarks: dlib's 5-point shape predictor (``face_recognition_models``) on the full-resolution
  frame; between two detections the box follows the landmarks (the predictor run in the previous
  frame's box), which costs a fraction of a detection;
* subject: at the first detection the largest face (tie: the most central), the ``face_index``-th
  by size, or the one overlapping ``box`` most; then the detection overlapping the tracked box;
* alignment: a similarity transform (rotation from the eye line, so the eyes are level, then the
  scale and shift that best fit the 5 points to a template) to an upright ``crop_size`` square in
  the style of Aff-Wild2's ``cropped_aligned``: eyes 38% from the top, the face ~75% of the width.

Offline (`FacePipeline.track`), frames where the subject was not found are filled by linear
interpolation of box and landmarks between the neighbouring frames where it was, held at the ends.

Needs the ``faces`` extra (dlib and its models): ``pip install "rja[faces]"``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from rja_models.cli import UsageError
from rja_models.data import DataError, probe_video
from rja_models.data.video import fit_image

FACES_INSTALL = 'pip install "rja[faces]" (from a checkout: pip install ".[faces]")'
_MODELS_PACKAGE = "face_recognition_models"
_FIVE_POINT_MODEL = "models/shape_predictor_5_face_landmarks.dat"

DEFAULT_CROP_SIZE = 112
DEFAULT_DETECT_EVERY = 3
DEFAULT_DETECT_WIDTH = 480  # 640x480 at 30 fps in real time on 2 loaded cores (benchmarks/face_pipeline_fps.py)
MIN_DETECTED_FACE = 65  # px in the downscaled frame: the HOG detector's 80 px window finds no smaller face
# Below this IoU with the tracked box a detection is another face (or a false alarm).
_MIN_TRACK_IOU = 0.3
# While the subject is lost, a face within (1 + frames lost / this) box sizes of its last box is taken
# as the subject again: the longer it was lost, the farther it may have gone.
_LOST_REACH_FRAMES = 15
# Landmark tracking moved the box by more than this fraction of its size: rerun the predictor in the new box.
_REFINE_SHIFT = 0.1

# Template of dlib's 5 points in an aligned crop, in units of the crop size (continuous coordinates):
# 0, 1 the outer and inner corner of the eye on the image's right (the subject's left eye), 2, 3 those
# of the other eye, 4 the base of the nose. The proportions are those of a frontal face (outer corners
# D apart, inner corners 0.46 D, the nose base 0.52 D below the eye line), with D = 0.405 so that the
# face (dlib's box is ~1.85 D wide) fills ~75% of the width, and the eye line at 38% of the height
# (measured on matplotlib's frontal grace_hopper.jpg).
_EYE_LINE = 0.38
_D = 0.405
TEMPLATE = np.array([
    [0.5 + 0.5 * _D, _EYE_LINE],
    [0.5 + 0.228 * _D, _EYE_LINE],
    [0.5 - 0.5 * _D, _EYE_LINE],
    [0.5 - 0.228 * _D, _EYE_LINE],
    [0.5, _EYE_LINE + 0.52 * _D],
], dtype=np.float64)
RIGHT_EYE = (0, 1)  # the eye on the image's right
LEFT_EYE = (2, 3)


class FaceModelsMissing(UsageError):
    """dlib or its face models are not installed (the ``faces`` extra)."""


class NoFaceFound(UsageError):
    """No frame of a video shows the subject's face. ``reason``: the message without ``hint`` (what to
    do instead, for one command)."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason + hint)
        self.reason = reason


def _five_point_model() -> Path:
    # Located without importing the package: its __init__ needs pkg_resources, gone from recent setuptools.
    spec = importlib.util.find_spec(_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelsMissing(f"the face pipeline needs the package {_MODELS_PACKAGE}, which is not installed "
                                f"here: {FACES_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / _FIVE_POINT_MODEL
    if not path.is_file():
        raise FaceModelsMissing(f"{path}: the landmark model of {_MODELS_PACKAGE} is missing; reinstall it: "
                                f"{FACES_INSTALL}")
    return path


def _import_dlib() -> Any:
    try:
        return importlib.import_module("dlib")
    except ImportError as e:
        raise FaceModelsMissing(f"the face pipeline needs dlib, which is not installed here ({e}): "
                                f"{FACES_INSTALL}") from None


@functools.cache
def _models() -> tuple[Any, Any, Any]:
    """(dlib, the HOG detector, the 5-point predictor), loaded once per process (a second or so)."""
    dlib = _import_dlib()
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(_five_point_model()))


def require_face_models() -> None:
    """Raise `FaceModelsMissing` (a `UsageError`, with the install command) unless dlib and the
    5-point landmark model of ``face_recognition_models`` are installed."""
    _import_dlib()
    _five_point_model()


@dataclass
class FaceTrack:
    """One subject's face in every frame of a video (index = frame in presentation order)."""

    boxes: np.ndarray
    """float32 [N, 4]: x0, y0, x1, y1 in the original frame's pixels (continuous coordinates: a pixel
    ``i`` spans ``[i, i + 1)``); interpolated where ``detected`` is False."""
    landmarks: np.ndarray
    """float32 [N, 5, 2]: dlib's 5 points (x, y; pixel ``i``'s centre is ``i``), interpolated likewise."""
    detected: np.ndarray
    """bool [N]: the face was found on that frame, by the detector or by following its landmarks between
    two detections that found it; False: interpolated (or held before the first / after the last)."""

    @property
    def num_frames(self) -> int:
        """Frames in the track."""
        return len(self.detected)


def iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """float [K]: intersection over union of each of ``boxes`` [K, 4] with ``box`` [4] (x0, y0, x1, y1)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    box = np.asarray(box, dtype=np.float64)
    w = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    h = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = w * h
    union = _area(boxes) + _area(box[None])[0] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def centre_box(width: int, height: int) -> np.ndarray:
    """float32 [4]: the largest centred square of a ``width`` x ``height`` frame (what `fit_image` keeps)."""
    side = min(width, height)
    x0, y0 = (width - side) / 2, (height - side) / 2
    return np.array([x0, y0, x0 + side, y0 + side], dtype=np.float32)


# What the per-frame step found.
_NONE, _DETECTED, _TRACKED, _MISSED = range(4)


@dataclass
class _State:
    """Where one subject is, frame after frame (one per `track` call or `FaceStream`)."""

    frame: int = -1
    box: np.ndarray | None = None  # float64 [4], this frame's
    landmarks: np.ndarray | None = None  # float64 [5, 2]
    anchor: tuple[np.ndarray, np.ndarray] | None = None  # (box, landmarks) of the last detection
    next_detection: int = 0
    lost_since: int | None = None  # frame of the first miss of the current loss


class FacePipeline:
    """Detect, track and align one subject's face (see the module docstring).

    Args:
        crop_size: side of the aligned crops (the model's ``image_size``).
        face_index: the subject is the ``face_index``-th face by size (0: the largest) at the first
            detection with that many faces.
        box: the subject is the face overlapping this box (x0, y0, x1, y1, original pixels) most at
            the first detection that overlaps it; overrides ``face_index``.
        detect_every: run the detector every this many frames while the face is found (1: every
            frame); in between, the box follows the landmarks.
        detect_width: frames wider than this are downscaled to this width for detection (the
            detector finds faces of ~65 px and more in the downscaled frame).

    Raises:
        FaceModelsMissing: dlib or its models are not installed.
        ValueError: a bad argument.
    """

    def __init__(self, *, crop_size: int = DEFAULT_CROP_SIZE, face_index: int = 0,
                 box: tuple[float, float, float, float] | None = None, detect_every: int = DEFAULT_DETECT_EVERY,
                 detect_width: int = DEFAULT_DETECT_WIDTH) -> None:
        if crop_size < 16 or face_index < 0 or detect_every < 1 or detect_width < 80:
            raise ValueError(f"need crop_size >= 16, face_index >= 0, detect_every >= 1 and detect_width >= 80, "
                             f"got {crop_size}, {face_index}, {detect_every}, {detect_width}")
        if box is not None and not (len(box) == 4 and box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box}")
        require_face_models()  # checked each time: the models below are loaded once
        self._dlib, self._detector, self._predictor = _models()
        self.crop_size, self.face_index, self.detect_every, self.detect_width = (
            crop_size, face_index, detect_every, detect_width)
        self.box = None if box is None else np.asarray(box, dtype=np.float64)

    # -- per frame -----------------------------------------------------------------------------

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """float64 [K, 4]: every face the detector finds in an RGB uint8 [H, W, 3] frame, in its pixels."""
        image = Image.fromarray(frame).convert("L")
        width, height = image.size
        scale = min(1.0, self.detect_width / width)
        if scale < 1.0:
            image = image.resize((round(width * scale), round(height * scale)), Image.BILINEAR)
        found = self._detector(np.asarray(image), 0)
        # dlib's right/bottom are inclusive pixel indices; +1 makes them edges of the pixel grid.
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in found], dtype=np.float64)
        return boxes.reshape(-1, 4) * (np.array([width / image.size[0], height / image.size[1]] * 2))

    def landmarks(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """float64 [5, 2]: dlib's 5 points of the face in ``box`` (x0, y0, x1, y1) of an RGB frame."""
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        shape = self._predictor(np.ascontiguousarray(frame), self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def _choose(self, boxes: np.ndarray, state: _State, frame_size: tuple[int, int]) -> int | None:
        """Which of the detected ``boxes`` is the subject, if any."""
        if not len(boxes):
            return None
        if state.anchor is None:  # not acquired yet
            if self.box is not None:
                overlap = iou(boxes, self.box)
                best = int(np.argmax(overlap))
                return best if overlap[best] > 0 else None
            width, height = frame_size
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2 - np.array([width / 2, height / 2])
            order = sorted(range(len(boxes)), key=lambda k: (-round(_area(boxes[k : k + 1])[0]),
                                                             float(np.hypot(*centre[k]))))
            return order[self.face_index] if self.face_index < len(order) else None
        if state.lost_since is None:
            overlap = iou(boxes, state.box)
            best = int(np.argmax(overlap))
            return best if overlap[best] >= _MIN_TRACK_IOU else None
        # Lost: the face nearest to the last box, of a similar size, within a reach that grows with time.
        ref = state.anchor[0]
        size = math.sqrt(_area(ref[None])[0])
        distance = np.hypot(*((boxes[:, :2] + boxes[:, 2:] - ref[:2] - ref[2:]) / 2).T) / size
        ratio = np.sqrt(_area(boxes)) / size
        reach = 1.0 + (state.frame - state.lost_since) / _LOST_REACH_FRAMES
        ok = (distance <= reach) & (ratio >= 0.5) & (ratio <= 2.0)
        return int(np.flatnonzero(ok)[np.argmin(distance[ok])]) if ok.any() else None

    def _step(self, state: _State, frame: np.ndarray) -> int:
        """Advance ``state`` by one frame; returns what was found (state.box / landmarks: where the face is)."""
        state.frame += 1
        if state.anchor is None or state.lost_since is not None or state.frame >= state.next_detection:
            boxes = self.detect(frame)
            chosen = self._choose(boxes, state, (frame.shape[1], frame.shape[0]))
            if chosen is not None:
                state.box = boxes[chosen]
                state.landmarks = self.landmarks(frame, state.box)
                state.anchor = (state.box, state.landmarks)
                state.lost_since = None
                state.next_detection = state.frame + self.detect_every
                return _DETECTED
            if state.anchor is None:
                return _NONE
            if state.lost_since is None:
                state.lost_since = state.frame
            state.box, state.landmarks = state.anchor  # hold the last detection, not a box that drifted
            return _MISSED
        landmarks = self.landmarks(frame, state.box)
        box = _follow(state.box, state.landmarks, landmarks)
        if _shift(state.box, box) > _REFINE_SHIFT:
            landmarks = self.landmarks(frame, box)
            box = _follow(state.box, state.landmarks, landmarks)
        state.box, state.landmarks = box, landmarks
        return _TRACKED

    # -- offline ---------------------------------------------------------------------------------

    def track(self, frames: Iterable[np.ndarray], *, progress: bool = False, total: int | None = None) -> FaceTrack:
        """The subject's face in every one of ``frames`` (RGB uint8 [H, W, 3]).

        A frame tracked between two detections counts as found only when the next detection finds
        the face again (else the face may have been covered since the last one); frames where it
        was not found are interpolated between their neighbours that were, held at the ends.

        Raises:
            NoFaceFound: no frame shows a face (the subject's, with ``face_index`` or ``box``).
        """
        state = _State()
        statuses, boxes, points = [], [], []
        for frame in tqdm(frames, total=total, desc="faces", unit="frame", disable=not progress, leave=False):
            status = self._step(state, frame)
            statuses.append(status)
            boxes.append(state.box if status != _NONE else np.zeros(4))
            points.append(state.landmarks if status != _NONE else np.zeros((5, 2)))
        status = np.array(statuses, dtype=np.int64)
        detected = status == _DETECTED
        # A tracked frame is confirmed by the next detection attempt after it (none: the video ended).
        attempts = np.flatnonzero((status == _DETECTED) | (status == _MISSED))
        tracked = np.flatnonzero(status == _TRACKED)
        next_found = np.append(status[attempts] == _DETECTED, True)
        detected[tracked[next_found[np.searchsorted(attempts, tracked)]]] = True
        if not detected.any():
            raise NoFaceFound(f"no face found in any of the {len(status)} frames")
        return FaceTrack(_interpolate(np.array(boxes), detected).astype(np.float32),
                         _interpolate(np.array(points), detected).astype(np.float32), detected)

    # -- alignment -------------------------------------------------------------------------------

    def transform(self, landmarks: np.ndarray) -> np.ndarray:
        """float64 [2, 3]: the similarity taking frame pixels to crop pixels (``[x', y'] = A @ [x, y, 1]``,
        pixel ``i``'s centre at ``i`` on both sides) for a face with these 5 ``landmarks``."""
        p = np.asarray(landmarks, dtype=np.float64) + 0.5  # to continuous coordinates
        q = TEMPLATE * self.crop_size
        eyes = p[list(RIGHT_EYE)].mean(axis=0) - p[list(LEFT_EYE)].mean(axis=0)
        angle = math.atan2(eyes[1], eyes[0])
        c, s = math.cos(angle), math.sin(angle)
        rotation = np.array([[c, s], [-s, c]])  # rotates the eye line onto the x axis: eyes level
        r = p @ rotation.T
        rc, qc = r - r.mean(axis=0), q - q.mean(axis=0)
        scale = float((rc * qc).sum() / max((rc * rc).sum(), 1e-12))  # least squares, rotation fixed
        matrix = scale * rotation
        shift = q.mean(axis=0) - scale * r.mean(axis=0)
        # Back from continuous to pixel-centre coordinates: x' + 0.5 = M (x + 0.5) + t.
        return np.concatenate([matrix, (shift + matrix @ [0.5, 0.5] - 0.5)[:, None]], axis=1)

    def align(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """uint8 [crop_size, crop_size, 3]: the upright crop of the face with these ``landmarks``
        (float [5, 2], as in `FaceTrack.landmarks`) from an RGB uint8 [H, W, 3] frame."""
        a = self.transform(landmarks)
        matrix, shift = a[:, :2], a[:, 2]
        inverse = np.linalg.inv(matrix)
        # PIL samples the input at inverse(output) in continuous coordinates (pixel centres at +0.5).
        offset = -inverse @ (shift + 0.5 - matrix @ [0.5, 0.5])
        coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
        size = (self.crop_size, self.crop_size)
        return np.asarray(Image.fromarray(frame).transform(size, Image.AFFINE, coeffs, resample=Image.BILINEAR))

    def stream(self) -> FaceStream:
        """A causal tracker for live input: one `FaceStream.update` per frame."""
        return FaceStream(self)


class FaceStream:
    """The face pipeline frame by frame, each answer from the frames so far only (live mode).

    Before the first detection it returns a centre crop of the frame; after the subject is lost, the
    crop and box of its last detection's position, until it is found again.
    """

    def __init__(self, pipeline: FacePipeline) -> None:
        self.pipeline = pipeline
        self._state = _State()

    def update(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(crop uint8 [crop_size, crop_size, 3], box float32 [4], detected)`` for the next RGB frame."""
        status = self.pipeline._step(self._state, frame)
        if status == _NONE:
            height, width = frame.shape[:2]
            return fit_image(Image.fromarray(frame), self.pipeline.crop_size), centre_box(width, height), False
        crop = self.pipeline.align(frame, self._state.landmarks)
        return crop, self._state.box.astype(np.float32), status != _MISSED


def _follow(box: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``box`` moved and scaled as the landmarks moved from ``before`` to ``after`` (no rotation: boxes are upright)."""
    c0, c1 = before.mean(axis=0), after.mean(axis=0)
    spread0 = np.sqrt(((before - c0) ** 2).sum(axis=1)).mean()
    spread1 = np.sqrt(((after - c1) ** 2).sum(axis=1)).mean()
    scale = spread1 / spread0 if spread0 > 0 else 1.0
    return np.concatenate([c1 + scale * (box[:2] - c0), c1 + scale * (box[2:] - c0)])


def _shift(a: np.ndarray, b: np.ndarray) -> float:
    """How far box ``b`` is from box ``a``, relative to ``a``'s size."""
    size = math.sqrt(max(_area(a[None])[0], 1e-12))
    return float(np.abs(b - a).max() / size)


def _interpolate(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``values`` [N, ...] with the rows where ``known`` is False replaced by linear interpolation
    between the nearest known rows (the first / last known row before / after them)."""
    flat = values.reshape(len(values), -1)
    index = np.flatnonzero(known)
    frames = np.arange(len(values))
    out = np.stack([np.interp(frames, index, flat[index, k]) for k in range(flat.shape[1])], axis=1)
    return out.reshape(values.shape)


# -- files ---------------------------------------------------------------------------------------

def decode_frames(path: str | Path) -> Iterator[np.ndarray]:
    """RGB uint8 [H, W, 3] frames of a video file, in presentation order, as many as
    `rja_models.data.probe_video` counts.

    Raises:
        DataError: the file cannot be opened or decoded, or ends early (truncated).
    """
    path = Path(path)
    info = probe_video(path)
    count = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts < info.frame_pts[0]:
                    continue  # before the first presented frame (an edit list's preroll)
                yield frame.to_ndarray(format="rgb24")
                count += 1
                if count == info.num_frames:
                    return
    except (av.error.FFmpegError, OSError) as e:
        raise DataError(path, f"unreadable or truncated video ({e})") from e
    raise DataError(path, f"truncated video: decoding stopped at frame {count} of {info.num_frames}")


def track_video_file(path: str | Path, pipeline: FacePipeline, *, progress: bool = False) -> FaceTrack:
    """`FacePipeline.track` over every frame of a video file (one decode pass).

    Raises:
        NoFaceFound: no frame shows a face; the message names the file.
        DataError: unreadable or truncated file.
    """
    path = Path(path)
    total = probe_video(path).num_frames
    try:
        return pipeline.track(decode_frames(path), progress=progress, total=total)
    except NoFaceFound:
        raise NoFaceFound(f"{path}: no face found in any of its {total} frames (the detector finds frontal "
                          f"faces of about {_min_face(path, pipeline)} px and more at this size)",
                          "; to predict from the whole frame instead, pass --whole-frame to "
                          "python -m rja_models.predict") from None


def _min_face(path: Path, pipeline: FacePipeline) -> int:
    return round(MIN_DETECTED_FACE * max(1.0, probe_video(path).width / pipeline.detect_width))


def aligned_crops(path: str | Path, track: FaceTrack, pipeline: FacePipeline) -> Iterator[np.ndarray]:
    """uint8 [crop_size, crop_size, 3]: the aligned crop of every frame of a video file, in order
    (a second decode pass over the file ``track`` was made from).

    Raises:
        ValueError: ``track`` has another number of frames than the file.
        DataError: unreadable or truncated file.
    """
    total = probe_video(path).num_frames
    if track.num_frames != total:
        raise ValueError(f"{path}: the track has {track.num_frames} frames, the file {total}")
    for frame, landmarks in zip(decode_frames(path), track.landmarks):
        yield pipeline.align(frame, landmarks)
