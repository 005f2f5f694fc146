"""Data for the audio-visual emotion model: video files, the Aff-Wild2 layout, features, synthetic data.

A video sub-sequence is cut into ``L`` clips; the model gets one visual clip ``[3, F, H, W]`` and
the audio of the same time span per clip (paper, section 3-A). Where windows sit, which frames a
clip shows (every ``d``-th of its ``F * d``) and which frames its prediction is scored on is
`rja_models.data.windows`; the audio of a clip is an `AudioWindow` in seconds, cut by time
(`VideoReader.clip_audio`), so it is the same span of time at any frame rate.

Defaults (the CPU-sized ones; docs/PAPER_SETUP.md compares them with the authors' setting):

* ``DEFAULT_CLIPS = 8``, ``DEFAULT_CLIP_FRAMES = 8``, consecutive frames, windows back to back: a
  64-frame sub-sequence, ~2 s of 30 fps video (~4 s of the 15 fps synthetic set); 8 frames is the
  shortest clip a 3D CNN (r3d_18: temporal stride 8) still sees as a volume. This is *not* the
  authors' setting: their ``config_file.json`` reads 512-frame windows of 16 clips of 32 frames, every
  4th frame shown (dilation 4), windows one frame apart in blocks so that every frame ends one clip
  (``configs/affwild2.yaml`` sets that: ``clips 16``, ``clip-frames 8``, ``frame-dilation 4``,
  ``window-layout tiled``, ``label-frame last``).
* ``DEFAULT_IMAGE_SIZE = 112``: the input size of r3d_18 and the size of Aff-Wild2's face crops.
* ``DEFAULT_SAMPLE_RATE = 16000``: speech audio (the usual rate of speech/emotion audio models;
  the authors' is 44100). The audio per clip defaults to one clip span at the training data's usual
  frame rate (8 frames at 30 fps: 0.267 s, 4267 samples).

Errors in the input raise :class:`DataError`, whose message names the file.
"""

from .affwild2 import (
    INVALID_LABEL,
    SPLIT_FOLDERS,
    VIDEO_EXTENSIONS,
    AffWild2Dataset,
    VideoFileDataset,
    dataset_options,
    jitter_clips,
    read_annotation,
)
from .errors import DataError
from .features import FeatureDataset, save_features
from .synthetic import generate_synthetic_dataset, write_av_file
from .video import (
    AudioWindow,
    VideoInfo,
    VideoReader,
    clip_audio_samples,
    probe_video,
    read_video_clips,
    video_frame_timestamps,
)
from .windows import LABEL_FRAMES, WINDOW_LAYOUTS, Windowing, authors_clip_frames, subsequence_starts

DEFAULT_CLIP_FRAMES = 8
DEFAULT_CLIPS = 8
DEFAULT_SAMPLE_RATE = 16000
DEFAULT_IMAGE_SIZE = 112

__all__ = [
    "DEFAULT_CLIPS",
    "DEFAULT_CLIP_FRAMES",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SAMPLE_RATE",
    "INVALID_LABEL",
    "LABEL_FRAMES",
    "SPLIT_FOLDERS",
    "VIDEO_EXTENSIONS",
    "WINDOW_LAYOUTS",
    "AffWild2Dataset",
    "AudioWindow",
    "DataError",
    "FeatureDataset",
    "VideoFileDataset",
    "VideoInfo",
    "VideoReader",
    "Windowing",
    "authors_clip_frames",
    "clip_audio_samples",
    "dataset_options",
    "generate_synthetic_dataset",
    "jitter_clips",
    "probe_video",
    "read_annotation",
    "read_video_clips",
    "save_features",
    "subsequence_starts",
    "video_frame_timestamps",
    "write_av_file",
]
