"""Decoding real video files: frame counts, timestamps, audio length and A-V alignment."""

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from data_fixtures import SR, burst_audio, index_frames, onsets, write_test_video

from rja_models.data import (
    DataError,
    VideoFileDataset,
    VideoReader,
    clip_audio_samples,
    probe_video,
    read_video_clips,
    video_frame_timestamps,
)

# AAC is lossy: a burst's detected onset may move by a sample or two (measured: <= 1).
TOL = 4


def test_decode_mp4_frames_timestamps_and_aligned_audio(tmp_path):
    path = write_test_video(tmp_path / "v.mp4", n=40, fps=15, burst_frames=[10, 26])
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.has_audio) == (40, 15.0, True)
    np.testing.assert_allclose(video_frame_timestamps(path).numpy(), np.arange(40) / 15, atol=1e-6)
    with VideoReader(path, image_size=32) as reader:
        frames = list(reader.iter_frames())
        middle = list(reader.iter_frames(17, 5))  # random access after a seek
    assert len(frames) == 40
    np.testing.assert_allclose([t for t, _ in frames], np.arange(40) / 15, atol=1e-6)
    levels = np.array([image.mean() for _, image in frames])
    assert frames[0][1].shape == (32, 32, 3)
    np.testing.assert_allclose(levels, 5 * np.arange(40), atol=3)  # frame i really is frame i
    np.testing.assert_allclose([image.mean() for _, image in middle], 5 * np.arange(17, 22), atol=3)

    clip = read_video_clips(path, clip_frames=8, clips=3, start_frame=8, sample_rate=SR, image_size=32)
    s = clip_audio_samples(8, 15, SR)
    assert s == 8533
    assert clip["frames"].shape == (3, 3, 8, 32, 32) and clip["frames"].dtype == torch.float32
    assert clip["audio"].shape == (3, s)
    # The clip of frames 8..15 hears the burst written at frame 10, 2 frames after its start.
    audio = clip["audio"].numpy()
    assert abs(onsets(audio[0])[0] - round(2 / 15 * SR)) <= TOL
    assert onsets(audio[1]) == []
    assert abs(onsets(audio[2])[0] - round(2 / 15 * SR)) <= TOL
    assert clip["valid"].all()
    np.testing.assert_allclose(clip["frames"][1, 0].mean(dim=(1, 2)).numpy(), 5 * np.arange(16, 24) / 255, atol=0.02)


def test_ntsc_rate_keeps_audio_aligned(tmp_path):
    fps = Fraction(30000, 1001)
    path = write_test_video(tmp_path / "ntsc.mp4", n=120, fps=fps, burst_frames=[101])
    info = probe_video(path)
    assert info.num_frames == 120 and abs(info.fps - 29.97003) < 1e-4
    np.testing.assert_allclose(info.timestamps, np.arange(120) * 1001 / 30000, atol=1e-6)
    clip = read_video_clips(path, clip_frames=8, clips=2, start_frame=96, sample_rate=SR, image_size=32)
    assert clip["audio"].shape == (2, round(8 * 1001 / 30000 * SR))
    # Frame 101 is 5 frames into clip 0: at 29.97 fps, not 30, so 2669 samples, not 2667 (no drift).
    assert abs(onsets(clip["audio"][0].numpy())[0] - round(5 * 1001 / 30000 * SR)) <= TOL
    assert clip["valid"].all()


def test_dropped_frames_keep_audio_on_the_clip_timestamps(tmp_path):
    pts = [*range(20), *range(23, 43)]  # frames 20-22 dropped: 40 frames over 43 frame slots
    path = write_test_video(tmp_path / "drop.mp4", n=40, fps=15, frame_pts=pts, burst_frames=[34])
    info = probe_video(path)
    assert info.num_frames == 40 and info.fps == pytest.approx(15.0)
    np.testing.assert_allclose(info.timestamps, np.array(pts) / 15, atol=1e-6)
    clip = read_video_clips(path, clip_frames=8, clips=1, start_frame=29, sample_rate=SR, image_size=32)
    # Frame index 29 is shown at slot 32: the burst at slot 34 is 2 frames later, not 5.
    assert abs(onsets(clip["audio"][0].numpy())[0] - round(2 / 15 * SR)) <= TOL
    np.testing.assert_allclose(clip["timestamps"].numpy(), np.array(pts[29:37]) / 15, atol=1e-6)


def test_other_container_and_codec(tmp_path):
    path = write_test_video(tmp_path / "v.mkv", n=30, fps=25, burst_frames=[12], codec="mpeg4")
    clip = read_video_clips(path, clip_frames=6, clips=5, sample_rate=SR, image_size=32)
    assert probe_video(path).num_frames == 30
    assert clip["audio"].shape == (5, round(6 / 25 * SR))
    assert abs(onsets(clip["audio"][2].numpy())[0] - 0) <= TOL  # frame 12 starts clip 2


def test_video_file_dataset_covers_the_whole_video(tmp_path):
    path = write_test_video(tmp_path / "v.mp4", n=40, fps=15, burst_frames=[])
    ds = VideoFileDataset(path, clip_frames=4, clips=3, sample_rate=SR, image_size=32)
    assert len(ds) == 4 and ds.num_frames == 40 and ds.fps == 15.0
    assert [ds[i]["start_frame"] for i in range(4)] == [0, 12, 24, 36]
    last = ds[3]
    assert last["frames"].shape == (3, 3, 4, 32, 32)
    assert last["audio"].shape == (3, clip_audio_samples(4, 15, SR))
    assert last["labels"].shape == (12, 2) and not last["labels"].any() and not last["mask"].any()
    assert last["video"] == "v"
    np.testing.assert_allclose(ds.timestamps().numpy(), np.arange(40) / 15, atol=1e-6)
    # Padding past frame 39 repeats the last frame; audio past the end is silence.
    assert torch.equal(last["frames"][2, :, 3], last["frames"][0, :, 3])


def test_no_audio_stream(tmp_path):
    path = write_test_video(tmp_path / "mute.mp4", n=20, fps=15, burst_frames=[], audio=False)
    with pytest.raises(DataError, match=r"mute\.mp4.*no audio stream.*visual_only=True"):
        VideoFileDataset(path, clip_frames=4, clips=2)
    with pytest.raises(DataError, match="visual_only"):
        read_video_clips(path, clip_frames=4, clips=2)
    item = VideoFileDataset(path, clip_frames=4, clips=2, image_size=32, visual_only=True)[0]
    assert item["audio"].shape == (2, clip_audio_samples(4, 15, 16000)) and not item["audio"].any()


def test_unreadable_and_truncated_video(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DataError, match=r"garbage\.mp4"):
        probe_video(garbage)
    with pytest.raises(DataError, match=r"missing\.mp4"):
        VideoFileDataset(tmp_path / "missing.mp4")
    path = write_test_video(tmp_path / "full.mp4", n=30, fps=15, burst_frames=[])
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.mp4: .*(unreadable|truncated)"):
        read_video_clips(cut, clip_frames=4, clips=2)


def test_truncated_video_with_index_first(tmp_path):
    """With the index (moov) at the front, a cut file still opens: the missing frames are caught."""
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width = stream.height = 64
        for i, image in enumerate(index_frames(60)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=r"faststart\.mp4: truncated video: \d+ of 60 frames"):
        probe_video(path)


def test_burst_helper_sanity():
    assert onsets(burst_audio(1.0, [0.25, 0.5])) == [4000, 8000]
