"""Data for the audio-visual emotion model: video files, the Aff-Wild2 layout, features, synthetic data.

A video sub-sequence is cut into ``L`` non-overlapping clips of ``F`` frames; the model gets one
visual clip ``[3, F, H, W]`` and the audio of the same time span per clip (paper, section 3-A).

Defaults:

* ``DEFAULT_CLIPS = 8``, ``DEFAULT_CLIP_FRAMES = 8``: the authors' Aff-Wild2 setting, as we read
  their joint cross-attention papers (sub-sequences of 64 frames cut into 8 clips of 8 frames).
  It is already small: a 64-frame sub-sequence is ~2 s of 30 fps video (~4 s of the 15 fps
  synthetic set), and 8 frames is the shortest clip a 3D CNN (r3d_18: temporal stride 8) still
  sees as a volume, so a CPU can train on it.
* ``DEFAULT_IMAGE_SIZE = 112``: the input size of r3d_18 and the size of Aff-Wild2's face crops.
* ``DEFAULT_SAMPLE_RATE = 16000``: speech audio (the usual rate of speech/emotion audio
  models); one 8-frame clip at 30 fps is 4267 samples, at 15 fps 8533.

Errors in the input raise :class:`DataError`, whose message names the file.
"""

from .affwild2 import (
    INVALID_LABEL,
    SPLIT_FOLDERS,
    VIDEO_EXTENSIONS,
    AffWild2Dataset,
    VideoFileDataset,
    read_annotation,
    subsequence_starts,
)
from .errors import DataError
from .features import FeatureDataset, save_features
from .synthetic import generate_synthetic_dataset, write_av_file
from .video import (
    VideoInfo,
    VideoReader,
    clip_audio_samples,
    probe_video,
    read_video_clips,
    video_frame_timestamps,
)

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
    "SPLIT_FOLDERS",
    "VIDEO_EXTENSIONS",
    "AffWild2Dataset",
    "DataError",
    "FeatureDataset",
    "VideoFileDataset",
    "VideoInfo",
    "VideoReader",
    "clip_audio_samples",
    "generate_synthetic_dataset",
    "probe_video",
    "read_annotation",
    "read_video_clips",
    "save_features",
    "subsequence_starts",
    "video_frame_timestamps",
    "write_av_file",
]
