"""The face pipeline against a real photograph pasted into generated frames at known places.

The oracle is where the photo was pasted: the face's box in the still photo (measured once with
dlib's detector on the full-size photo) mapped by each frame's known scale and offset. Aligned crops
are checked by running the detector and the landmark model again on the crop.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from rja_models.data import probe_video, write_av_file
from rja_models.data.video import fit_image
from rja_models.inference import faces
from rja_models.inference.faces import (
    FaceModelsMissing,
    FacePipeline,
    NoFaceFound,
    aligned_crops,
    centre_box,
    iou,
    require_face_models,
    track_video_file,
)

needs_dlib = pytest.mark.skipif(importlib.util.find_spec("dlib") is None or
                                importlib.util.find_spec("face_recognition_models") is None,
                                reason='needs the faces extra: pip install ".[faces]"')

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
# dlib's HOG box of the face in the full-size photo (512x600), x0, y0, x1, y1 (see test_reference_box).
PHOTO_FACE = np.array([161.0, 137.0, 377.0, 353.0])
PATCH = (96, 72, 440, 420)  # the head and shoulders, the part of the photo pasted into frames
SIZE = (640, 480)
BACKGROUND = (70, 90, 80)
N = 48


def photo_patch() -> Image.Image:
    with Image.open(PHOTO) as photo:
        return photo.convert("RGB").crop(PATCH)


def paste(frame: Image.Image, patch: Image.Image, x: int, y: int, scale: float) -> np.ndarray:
    """Paste ``patch`` scaled by ``scale`` at (x, y) into ``frame``; returns the face's known box there."""
    w, h = round(patch.width * scale), round(patch.height * scale)
    frame.paste(patch.resize((w, h), Image.BILINEAR), (x, y))
    sx, sy = w / patch.width, h / patch.height
    return np.array([x + (PHOTO_FACE[0] - PATCH[0]) * sx, y + (PHOTO_FACE[1] - PATCH[1]) * sy,
                     x + (PHOTO_FACE[2] - PATCH[0]) * sx, y + (PHOTO_FACE[3] - PATCH[1]) * sy])


def moving_photo(n: int = N, *, size: tuple[int, int] = SIZE, blank_frames: int = 0
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` RGB frames of the photo moving right and down and growing (0.75x to 1x, a face of 160 to
    215 px) over a flat background, after ``blank_frames`` frames of background alone; and the
    face's known box per frame (float [n, 4]; NaN on blank frames)."""
    patch = photo_patch()
    frames, known = [], []
    for _ in range(blank_frames):
        frames.append(np.asarray(Image.new("RGB", size, BACKGROUND)))
        known.append(np.full(4, np.nan))
    for i in range(n):
        t = i / (n - 1)
        frame = Image.new("RGB", size, BACKGROUND)
        known.append(paste(frame, patch, round(20 + 280 * t), round(10 + 40 * t), 0.75 + 0.25 * t))
        frames.append(np.asarray(frame))
    return frames, np.array(known)


def cover(frames: list[np.ndarray], known: np.ndarray, indices: range) -> list[np.ndarray]:
    """The frames with a grey block painted over the face on ``indices``."""
    out = list(frames)
    for i in indices:
        x0, y0, x1, y1 = (round(v) for v in known[i])
        frame = frames[i].copy()
        frame[max(y0 - 20, 0) : y1 + 20, max(x0 - 20, 0) : x1 + 20] = 128
        out[i] = frame
    return out


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    write_av_file(path, frames, fps=fps)
    return path


def box_ious(boxes: np.ndarray, known: np.ndarray) -> np.ndarray:
    return np.array([iou(b[None], k)[0] for b, k in zip(boxes, known)])


def measure_crop(pipeline: FacePipeline, crop: np.ndarray) -> np.ndarray:
    """float [5, 2]: landmarks found afresh in an aligned crop (detector + predictor on the crop
    upscaled 3x, the detector's smallest face being ~80 px), in crop pixels."""
    big = np.asarray(Image.fromarray(crop).resize((crop.shape[1] * 3, crop.shape[0] * 3), Image.BICUBIC))
    found = pipeline.detect(big)
    assert len(found) == 1, "the aligned crop shows no upright face"
    return (pipeline.landmarks(big, found[0]) - 1) / 3  # pixel centres: i -> 3i + 1 in the upscaled crop


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline()


@pytest.fixture(scope="module")
def scene() -> tuple[list[np.ndarray], np.ndarray]:
    return moving_photo()


@pytest.fixture(scope="module")
def video(tmp_path_factory, scene) -> Path:
    return write_video(tmp_path_factory.mktemp("faces") / "moving.mp4", scene[0])


@needs_dlib
def test_reference_box(pipeline):
    with Image.open(PHOTO) as photo:
        found = FacePipeline(detect_width=10_000).detect(np.asarray(photo.convert("RGB")))
    assert len(found) == 1 and iou(found, PHOTO_FACE)[0] > 0.95


@needs_dlib
def test_track_follows_the_moving_face(pipeline, scene, video):
    _, known = scene
    track = track_video_file(video, pipeline)
    assert track.num_frames == probe_video(video).num_frames == N
    assert track.boxes.shape == (N, 4) and track.boxes.dtype == np.float32
    assert track.landmarks.shape == (N, 5, 2) and track.landmarks.dtype == np.float32
    assert track.detected.all()
    overlap = box_ious(track.boxes, known)
    assert overlap.min() >= 0.6, overlap.round(2)


@needs_dlib
@pytest.mark.parametrize("detect_every", [1, 8])  # 8: holding the box in between would lose it
def test_tracking_between_detections(scene, detect_every):
    frames, known = scene
    track = FacePipeline(detect_every=detect_every).track(frames)
    assert track.detected.all()
    assert box_ious(track.boxes, known).min() >= 0.6


@needs_dlib
def test_aligned_crops_have_level_eyes_at_one_scale(pipeline, video):
    track = track_video_file(video, pipeline)
    crops = list(aligned_crops(video, track, pipeline))
    assert len(crops) == N and all(c.shape == (112, 112, 3) and c.dtype == np.uint8 for c in crops)
    spans, lines = [], []
    for crop in crops[::6]:
        points = measure_crop(pipeline, crop)
        left, right = points[[2, 3]].mean(axis=0), points[[0, 1]].mean(axis=0)  # the image's left / right eye
        assert right[0] > left[0] and abs(right[1] - left[1]) < 2.0, (left, right)
        spans.append(right[0] - left[0])
        lines.append((left[1] + right[1]) / 2)
    spans = np.array(spans)
    # The photo grows by a third over the video; the crops do not.
    assert spans.max() / spans.min() < 1.08, spans
    # Aff-Wild2's framing: eyes 35-40% from the top, the face (~2.56 eye spans wide) ~75% of the width.
    assert 0.35 * 112 <= np.mean(lines) <= 0.40 * 112
    assert 0.70 <= 2.56 * spans.mean() / 112 <= 0.80


@needs_dlib
@pytest.mark.parametrize("angle", [-15, 15])
def test_tilted_faces_are_aligned_upright(pipeline, angle):
    patch = photo_patch().rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=BACKGROUND)
    frame = Image.new("RGB", SIZE, BACKGROUND)
    frame.paste(patch, (100, 20))
    track = pipeline.track([np.asarray(frame)] * 2)
    points = measure_crop(pipeline, pipeline.align(np.asarray(frame), track.landmarks[0]))
    left, right = points[[2, 3]].mean(axis=0), points[[0, 1]].mean(axis=0)
    assert right[0] > left[0] and abs(right[1] - left[1]) < 2.0, (left, right)


@needs_dlib
def test_align_is_the_similarity_it_reports(pipeline, scene):
    frames, _ = scene
    frame = frames[10]
    landmarks = pipeline.landmarks(frame, pipeline.detect(frame)[0])
    a = pipeline.transform(landmarks)
    crop_points = landmarks @ a[:, :2].T + a[:, 2]
    assert abs(crop_points[[0, 1], 1].mean() - crop_points[[2, 3], 1].mean()) < 1e-6  # eyes exactly level
    # A mark painted at a landmark shows up in the crop where the transform puts it.
    marked = frame.copy()
    x, y = np.round(landmarks[4]).astype(int)
    marked[y - 2 : y + 3, x - 2 : x + 3] = (255, 0, 255)
    crop = pipeline.align(marked, landmarks).astype(int)
    magenta = (crop[..., 0] > 200) & (crop[..., 1] < 80) & (crop[..., 2] > 200)
    assert magenta.any()
    ys, xs = np.nonzero(magenta)
    nose = landmarks[4] @ a[:, :2].T + a[:, 2]
    assert abs(xs.mean() - nose[0]) < 1.0 and abs(ys.mean() - nose[1]) < 1.0


@needs_dlib
def test_covered_frames_are_interpolated(pipeline, scene):
    frames, known = scene
    covered = range(20, 30)
    track = pipeline.track(cover(frames, known, covered))
    assert not track.detected[list(covered)].any()
    # Frames tracked after the last detection before the cover are not trusted either.
    margin = pipeline.detect_every - 1
    assert track.detected[: covered.start - margin].all() and track.detected[covered.stop :].all()
    # The photo moves linearly: the interpolated boxes are where the face was.
    overlap = box_ious(track.boxes[list(covered)], known[list(covered)])
    assert overlap.min() >= 0.7, overlap.round(2)
    assert np.isfinite(track.landmarks).all()


@needs_dlib
def test_face_missing_at_the_ends_is_held(pipeline, scene):
    frames, known = scene
    track = pipeline.track(cover(cover(frames, known, range(0, 6)), known, range(N - 5, N)))
    assert not track.detected[:6].any() and not track.detected[N - 5 :].any()
    first, last = np.flatnonzero(track.detected)[[0, -1]]
    assert (track.boxes[:first] == track.boxes[first]).all() and (track.boxes[last:] == track.boxes[last]).all()


def two_faces() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """6 still frames with the photo twice: large on the right, small on the left; and their boxes."""
    patch = photo_patch()
    frame = Image.new("RGB", SIZE, BACKGROUND)
    small = paste(frame, patch, 0, 150, 0.62)
    large = paste(frame, patch, 300, 40, 1.0)
    return [np.asarray(frame)] * 6, large, small


@needs_dlib
def test_subject_choice():
    frames, large, small = two_faces()
    assert iou(FacePipeline().track(frames).boxes, large).min() >= 0.6
    assert iou(FacePipeline(face_index=1).track(frames).boxes, small).min() >= 0.6
    pick = tuple(small + np.array([10, -10, 30, 0]))  # a rough box around the small face
    assert iou(FacePipeline(box=pick).track(frames).boxes, small).min() >= 0.6
    with pytest.raises(NoFaceFound):
        FacePipeline(face_index=2).track(frames)


@needs_dlib
def test_subject_is_kept_when_it_is_covered():
    frames, large, _ = two_faces()
    frames = frames * 3
    covered = range(5, 12)
    frames = cover(frames, np.array([large] * len(frames)), covered)
    track = FacePipeline().track(frames)
    assert not track.detected[list(covered)].any() and track.detected[12:].all()
    assert iou(track.boxes, large).min() >= 0.6  # not the other face while the subject is away


@needs_dlib
def test_no_face_is_an_error_naming_the_file(pipeline, tmp_path):
    blank = [np.full((240, 320, 3), 100, np.uint8)] * 4
    with pytest.raises(NoFaceFound, match="no face"):
        pipeline.track(blank)
    path = write_video(tmp_path / "blank.mp4", blank)
    with pytest.raises(NoFaceFound, match=r"blank\.mp4: no face found in any of its 4 frames.*--whole-frame"):
        track_video_file(path, pipeline)


@needs_dlib
def test_stream_is_causal(pipeline):
    blank = 4
    frames, known = moving_photo(30, blank_frames=blank)
    covered = range(blank + 12, blank + 20)
    frames = cover(frames, known, covered)
    stream = pipeline.stream()
    outputs = [stream.update(f) for f in frames]
    prefix = pipeline.stream()
    for frame, (crop, box, detected) in zip(frames[:18], outputs):  # the same answers without the future
        crop2, box2, detected2 = prefix.update(frame)
        assert detected2 == detected and (box2 == box).all() and (crop2 == crop).all()
    crops = np.array([o[0] for o in outputs])
    boxes = np.array([o[1] for o in outputs])
    detected = np.array([o[2] for o in outputs])
    assert crops.shape == (len(frames), 112, 112, 3) and boxes.dtype == np.float32
    # Before the first face: the centre crop of the frame.
    assert not detected[:blank].any()
    assert (boxes[:blank] == centre_box(*SIZE)).all()
    assert (crops[0] == fit_image(Image.fromarray(frames[0]), 112)).all()
    # Found from its first frame on, and followed.
    visible = [i for i in range(blank, len(frames)) if i not in covered]
    assert detected[visible].all()
    assert box_ious(boxes[visible], known[visible]).min() >= 0.6
    # Covered: lost at the next detection at the latest, then the last box is held.
    lost = list(range(covered.start + pipeline.detect_every - 1, covered.stop))
    assert not detected[lost].any()
    assert (boxes[lost] == boxes[lost[0]]).all()
    # ... where the face was last detected, at most detect_every frames before the cover.
    assert iou(known[covered.start - pipeline.detect_every : covered.start + 1], boxes[lost[0]]).max() >= 0.6


def test_missing_dlib_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` now raises ImportError
    with pytest.raises(FaceModelsMissing, match=r'dlib.*pip install "rja\[faces\]"'):
        require_face_models()
    with pytest.raises(FaceModelsMissing):
        FacePipeline()


def test_missing_models_package_names_the_install_command(monkeypatch):
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("dlib missing: the dlib message comes first")
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)  # find_spec now finds nothing
    with pytest.raises(FaceModelsMissing, match=r'face_recognition_models.*pip install "rja\[faces\]"'):
        require_face_models()


def test_missing_model_file(monkeypatch, tmp_path):
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("dlib missing: the dlib message comes first")
    (tmp_path / "face_recognition_models").mkdir()
    (tmp_path / "face_recognition_models" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(os.fspath(tmp_path))
    monkeypatch.delitem(sys.modules, "face_recognition_models", raising=False)
    with pytest.raises(FaceModelsMissing, match="shape_predictor_5_face_landmarks.dat"):
        faces.require_face_models()
