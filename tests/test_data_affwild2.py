"""The Aff-Wild2 layout loader on a generated tree, its errors, and the generator itself."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from data_fixtures import SIZE, SR, small_tree
from PIL import Image

from rja_models.data import (
    AffWild2Dataset,
    DataError,
    VideoReader,
    clip_audio_samples,
    generate_synthetic_dataset,
    probe_video,
    read_annotation,
    write_av_file,
)
from rja_models.data.synthetic import rgb_to_yuv420p

L, F = 2, 8


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return small_tree(tmp_path_factory.mktemp("tree"))


def dataset(root, split="train", **kw):
    return AffWild2Dataset(root, split, clip_frames=F, clips=L, image_size=SIZE, sample_rate=SR, progress=False, **kw)


def copy_tree(tree, tmp_path):
    return shutil.copytree(tree, tmp_path / "copy")


def test_layout(tree):
    assert sorted(p.name for p in (tree / "videos").iterdir()) == ["synth_000.mp4", "synth_001.mp4", "synth_002.mp4"]
    train = tree / "VA_Estimation_Challenge" / "Train_Set"
    assert sorted(p.name for p in train.iterdir()) == ["synth_000_left.txt", "synth_000_right.txt", "synth_001.txt"]
    assert [p.name for p in (tree / "VA_Estimation_Challenge" / "Validation_Set").iterdir()] == ["synth_002.txt"]
    info = probe_video(tree / "videos" / "synth_000.mp4")
    assert (info.num_frames, info.fps, info.width, info.height, info.has_audio) == (36, 15.0, 2 * SIZE, SIZE, True)
    assert json.loads((tree / ".complete").read_text())["seed"] == 0


def test_items_labels_mask_and_crops(tree):
    ds = dataset(tree)
    assert ds.target_names == ["valence", "arousal"]
    assert [s.name for s in ds.sequences] == ["synth_000_left", "synth_000_right", "synth_001"]
    assert len(ds) == 3 * 3  # 36 frames in windows of 16: starts 0, 16, 32
    assert ds.audio_samples == clip_audio_samples(F, 15.0, SR)
    seen_invalid = seen_missing = 0
    for i in range(len(ds)):
        item = ds[i]
        name, start = item["video"], item["start_frame"]
        assert item["frames"].shape == (L, 3, F, SIZE, SIZE) and item["frames"].dtype == torch.float32
        assert item["audio"].shape == (L, ds.audio_samples)
        assert item["labels"].shape == (L * F, 2) and item["mask"].dtype == torch.bool
        _, labels, valid = read_annotation(tree / "VA_Estimation_Challenge" / "Train_Set" / f"{name}.txt")
        frames = item["frames"].permute(0, 2, 3, 4, 1).reshape(L * F, SIZE, SIZE, 3)
        for j in range(L * F):
            k = start + j  # 0-based frame; its crop is <k+1>.jpg
            crop = tree / "cropped_aligned" / name / f"{k + 1:05d}.jpg"
            if k >= 36:
                assert not item["mask"][j] and not item["labels"][j].any() and not frames[j].any()
                continue
            np.testing.assert_allclose(item["labels"][j].numpy(), labels[k])  # labels go with frames by index
            assert bool(item["mask"][j]) == (valid[k] and crop.exists())
            seen_invalid += not valid[k]
            if crop.exists():
                expected = np.asarray(Image.open(crop), dtype=np.float32) / 255
                np.testing.assert_allclose(frames[j].numpy(), expected, atol=1e-6)
            else:
                seen_missing += 1
                assert frames[j].any()  # filled with a neighbouring crop, masked out
    assert seen_invalid >= 4 and seen_missing >= 2


def test_annotation_has_minus_five_rows(tree):
    text = (tree / "VA_Estimation_Challenge" / "Train_Set" / "synth_001.txt").read_text().splitlines()
    assert text[0] == "valence,arousal" and len(text) == 37 and text.count("-5,-5") == 4


def test_left_right_pair_shares_the_audio_of_one_file(tree):
    ds = dataset(tree)
    left, right = ds[0], ds[3]
    assert (left["video"], right["video"]) == ("synth_000_left", "synth_000_right")
    assert torch.equal(left["audio"], right["audio"]) and left["audio"].abs().max() > 0.01
    assert not torch.equal(left["frames"], right["frames"])
    # The audio is the file's audio at the clips' frame timestamps.
    with VideoReader(tree / "videos" / "synth_000.mp4", sample_rate=SR) as reader:
        expected = reader.read_audio(F / 15.0, ds.audio_samples)
    np.testing.assert_allclose(left["audio"][1].numpy(), expected, atol=1e-6)


def test_splits_stride_subset_and_visual_only(tree):
    val = dataset(tree, "val")
    assert [s.name for s in val.sequences] == ["synth_002"]
    assert len(dataset(tree, "Validation_Set")) == len(val)
    overlapping = dataset(tree, stride=8, videos=["synth_001"])
    assert [overlapping[i]["start_frame"] for i in range(len(overlapping))] == [0, 8, 16, 24]
    item = dataset(tree, visual_only=True)[0]
    assert not item["audio"].any() and item["frames"].any()


def test_visual_only_without_videos(tree, tmp_path):
    root = copy_tree(tree, tmp_path)
    shutil.rmtree(root / "videos")
    with pytest.raises(DataError, match=r"synth_000\.mp4.*visual_only=True"):
        dataset(root)
    assert dataset(root, visual_only=True)[0]["mask"].any()


def test_bad_annotations(tree, tmp_path):
    root = copy_tree(tree, tmp_path)
    ann = root / "VA_Estimation_Challenge" / "Train_Set" / "synth_001.txt"
    good = ann.read_text()
    ann.write_text(good.replace("valence,arousal", "arousal,valence", 1))
    with pytest.raises(DataError, match=r"synth_001\.txt: annotation header"):
        dataset(root, videos=["synth_001"])
    ann.write_text(good + "0.1,0.2\n")
    with pytest.raises(DataError, match=r"synth_001\.txt: 37 label lines but .*synth_001\.mp4 has 36 frames"):
        dataset(root, videos=["synth_001"])
    lines = good.splitlines()
    lines[5] = "1.5,0.2"
    ann.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"synth_001\.txt: line 6: label .* outside \[-1, 1\]"):
        dataset(root, videos=["synth_001"])
    lines[5] = "0.5"
    ann.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"synth_001\.txt: line 6 is not 2 numbers"):
        dataset(root, videos=["synth_001"])
    with pytest.raises(DataError, match="no such annotation folder"):
        dataset(root, "Test_Set")


def test_video_without_audio_stream(tree, tmp_path):
    root = copy_tree(tree, tmp_path)
    with VideoReader(root / "videos" / "synth_001.mp4", image_size=None) as reader:
        frames = np.stack([image for _, image in reader.iter_frames()])
    write_av_file(root / "videos" / "synth_001.mp4", frames, fps=15)
    with pytest.raises(DataError, match=r"synth_001\.mp4: has no audio stream; pass visual_only=True"):
        dataset(root, videos=["synth_001"])
    assert len(dataset(root, videos=["synth_001"], visual_only=True)) == 3


def tree_digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_generator_is_deterministic_and_cached(tree, tmp_path):
    again = small_tree(tmp_path / "again")
    assert tree_digest(again) == tree_digest(tree)
    other = small_tree(tmp_path / "other", seed=1)
    ann = "VA_Estimation_Challenge/Train_Set/synth_001.txt"
    assert (other / ann).read_text() != (tree / ann).read_text()
    # A complete tree is not regenerated; one without the marker (interrupted) is.
    video = again / "videos" / "synth_001.mp4"
    mtime = video.stat().st_mtime_ns
    small_tree(again)
    assert video.stat().st_mtime_ns == mtime
    (again / ".complete").unlink()
    video.write_bytes(b"interrupted")
    small_tree(again)
    assert tree_digest(again) == tree_digest(tree)


@pytest.fixture(scope="module")
def default_tree(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("default"), progress=False)


def test_default_size_generation(default_tree):
    """The defaults (12 videos of 6 s) must stay quick to generate."""
    train, val = dataset(default_tree), dataset(default_tree, "val")
    assert len(train.sequences) == 10 and len(val.sequences) == 3


def test_default_size_generation_is_byte_identical(default_tree, tmp_path):
    """Generating the default set again in the same process gives the same bytes, videos included.

    A second encode in one process is what used to differ: x264's CPU-specific intra search read
    uninitialised heap memory, which is fresh (zeroed) only for the process's first encodes.
    """
    again = generate_synthetic_dataset(tmp_path, progress=False)
    first, second = tree_digest(default_tree), tree_digest(again)
    assert sum(name.endswith(".mp4") for name in first) == 12
    assert [name for name in first if first[name] != second.get(name)] == []
    assert first == second


def test_rgb_to_yuv420p():
    image = np.zeros((4, 6, 3), np.uint8)
    image[:, :2] = 255  # white, then black, then pure red in 2-pixel-wide columns
    image[:, 4:, 0] = 255
    yuv = rgb_to_yuv420p(image).reshape(-1)
    y, u, v = yuv[:24].reshape(4, 6), yuv[24:30].reshape(2, 3), yuv[30:].reshape(2, 3)
    assert y[0].tolist() == [235, 235, 16, 16, 82, 82]
    assert u[0].tolist() == [128, 128, 90] and v[0].tolist() == [128, 128, 240]
    with pytest.raises(ValueError, match="even"):
        rgb_to_yuv420p(np.zeros((3, 4, 3), np.uint8))
