"""Precomputed feature files: save/load round trip and sub-sequence windows."""

import pytest
import torch

from rja_models.data import DataError, FeatureDataset, save_features

F = 4


def pieces(video, clips_per_piece, pieces_count, da=5, dv=7, targets=3):
    """Feature records as a dataset walk would give them: one per sub-sequence, in any order."""
    out = []
    for p in range(pieces_count):
        n = clips_per_piece
        out.append({
            "video": video,
            "start_frame": p * n * F,
            "xa": torch.randn(n, da),
            "xv": torch.randn(n, dv),
            "labels": torch.rand(n * F, targets) * 2 - 1,
            "mask": torch.rand(n * F) > 0.2,
        })  # fmt: skip
    return out[::-1]


def test_round_trip(tmp_path):
    a, b = pieces("a", 3, 2), pieces("b", 5, 1)
    files = save_features(tmp_path, a + b, clip_frames=F, target_names=("valence", "arousal", "dominance"))
    assert sorted(f.name for f in files) == ["a.pt", "b.pt"]
    stored = torch.load(tmp_path / "a.pt", weights_only=True)  # plain tensors only
    ordered = a[::-1]
    assert torch.equal(stored["xa"], torch.cat([r["xa"] for r in ordered]))
    assert torch.equal(stored["mask"], torch.cat([r["mask"] for r in ordered]))
    assert stored["clip_frames"] == F and stored["target_names"] == ["valence", "arousal", "dominance"]

    ds = FeatureDataset(tmp_path, clips=4)
    assert ds.clip_frames == F and ds.feature_dims == (5, 7) and ds.target_names[2] == "dominance"
    assert len(ds) == 2 + 2  # a: 6 clips -> starts 0, 4; b: 5 clips -> starts 0, 4
    first, tail = ds[0], ds[1]
    assert first["xa"].shape == (4, 5) and first["xv"].shape == (4, 7)
    assert first["labels"].shape == (4 * F, 3) and first["mask"].shape == (4 * F,)
    assert (first["video"], first["start_frame"], tail["start_frame"]) == ("a", 0, 4 * F)
    assert torch.equal(first["xv"], stored["xv"][:4])
    assert torch.equal(tail["labels"][: 2 * F], stored["labels"][4 * F :])
    # Past the end of the video: zero features, zero labels, masked out.
    assert not tail["xa"][2:].any() and not tail["mask"][2 * F :].any() and not tail["labels"][2 * F :].any()
    assert len(FeatureDataset(tmp_path, clips=4, stride=1, videos=["b"])) == 2  # starts 0, 1 (reaches the end)


def test_pieces_must_tile(tmp_path):
    records = pieces("a", 2, 3)
    del records[1]
    with pytest.raises(ValueError, match="tile"):
        save_features(tmp_path, records, clip_frames=F)
    bad = pieces("a", 2, 1)
    bad[0]["labels"] = bad[0]["labels"][:-1]
    with pytest.raises(ValueError, match="label rows"):
        save_features(tmp_path, bad, clip_frames=F)


def test_bad_feature_files(tmp_path):
    with pytest.raises(DataError, match="no feature file"):
        FeatureDataset(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk\.pt: not a feature file"):
        FeatureDataset(tmp_path)
    (tmp_path / "junk.pt").unlink()
    save_features(tmp_path, pieces("a", 2, 1), clip_frames=F)
    save_features(tmp_path, pieces("b", 2, 1, da=6), clip_frames=F)
    with pytest.raises(DataError, match=r"b\.pt: clip_frames/targets/feature sizes differ"):
        FeatureDataset(tmp_path)


def test_scored_frames_round_trip_and_default_to_the_mask(tmp_path):
    """The official protocol scores frames without a crop too: their "scored" rows survive the
    feature files (and files without them fall back to the training mask)."""
    a = pieces("a", 2, 1)
    a[0]["mask"] = torch.arange(2 * F) % 2 == 0
    a[0]["scored"] = a[0]["mask"] | (torch.arange(2 * F) % 3 == 0)  # crop-less frames 3, 9 scored too
    assert not torch.equal(a[0]["scored"], a[0]["mask"])
    save_features(tmp_path / "with", a, clip_frames=F)
    item = FeatureDataset(tmp_path / "with", clips=2)[0]
    assert torch.equal(item["scored"], a[0]["scored"]) and torch.equal(item["mask"], a[0]["mask"])
    del a[0]["scored"]
    save_features(tmp_path / "without", a, clip_frames=F)
    assert torch.equal(FeatureDataset(tmp_path / "without", clips=2)[0]["scored"], a[0]["mask"])
