"""Feature extraction (`rja_models.features.extract_features`) into the data package's feature files,
and fusion training on them."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from rja_models.config import ModelConfig
from rja_models.data import AffWild2Dataset, FeatureDataset, generate_synthetic_dataset
from rja_models.features import extract_features
from rja_models.model import RJAModel

CLIPS, FRAMES, SIZE, SAMPLES = 2, 4, 32, 1500


def fake_batches(videos: dict[str, int], batch_size: int = 2):
    """Batches of dataset items: `videos` maps a name to its number of windows."""
    items = [(v, w) for v, n in videos.items() for w in range(n)]
    for i in range(0, len(items), batch_size):
        rows = items[i:i + batch_size]
        b = len(rows)
        yield {
            "frames": torch.rand(b, CLIPS, 3, FRAMES, SIZE, SIZE),
            "audio": torch.randn(b, CLIPS, SAMPLES),
            "labels": torch.rand(b, CLIPS * FRAMES, 2) * 2 - 1,
            "mask": torch.rand(b, CLIPS * FRAMES) > 0.2,
            "video": [v for v, _ in rows],
            "start_frame": torch.tensor([w * CLIPS * FRAMES for _, w in rows]),
        }


def tiny_model(**overrides) -> RJAModel:
    torch.manual_seed(0)
    return RJAModel(ModelConfig(clips=CLIPS, clip_frames=FRAMES, image_size=SIZE, **overrides))


def test_features_match_encode_and_feed_the_fusion(tmp_path):
    model = tiny_model().train()
    batches = list(fake_batches({"a": 3, "b": 2}))
    files = extract_features(model, batches, tmp_path, progress=False)
    assert [f.name for f in files] == ["a.pt", "b.pt"]
    assert model.training  # mode restored

    data = FeatureDataset(tmp_path, clips=CLIPS)
    assert len(data) == 5 and data.clip_frames == FRAMES and data.feature_dims == (512, 512)
    model.eval()
    with torch.no_grad():
        xa, xv = model.encode(batches[0]["frames"], batches[0]["audio"])
        for i in range(2):
            item = data[i]
            torch.testing.assert_close(item["xa"], xa[i])
            torch.testing.assert_close(item["xv"], xv[i])
            torch.testing.assert_close(item["labels"], batches[0]["labels"][i])
            assert torch.equal(item["mask"], batches[0]["mask"][i])
        head = RJAModel(model.config.replace(use_backbones=False))
        head.load_state_dict(model.state_dict(), strict=False)
        batch = next(iter(DataLoader(data, batch_size=2)))
        torch.testing.assert_close(head.eval()(xa=batch["xa"], xv=batch["xv"])["frame"],
                                   model(batches[0]["frames"], batches[0]["audio"])["frame"])


def test_single_modality_model_stores_empty_features(tmp_path):
    model = tiny_model(fusion="audio")
    extract_features(model, fake_batches({"a": 2}), tmp_path, progress=False)
    assert FeatureDataset(tmp_path, clips=CLIPS).feature_dims == (512, 0)


def test_shuffled_loader_is_refused(tmp_path):
    model = tiny_model(fusion="audio")
    batches = list(fake_batches({"a": 1, "b": 1}, batch_size=1)) + list(fake_batches({"a": 1}, batch_size=1))
    with pytest.raises(ValueError, match="without shuffling"):
        extract_features(model, batches, tmp_path, progress=False)


@pytest.mark.slow
def test_extract_from_synthetic_affwild2(tmp_path):
    root = generate_synthetic_dataset(tmp_path / "data", num_videos=2, seconds=1.2, fps=15.0, image_size=SIZE,
                                      two_person=False, progress=False)
    dataset = AffWild2Dataset(root, "train", clips=CLIPS, clip_frames=FRAMES, image_size=SIZE, progress=False)
    files = extract_features(tiny_model(), DataLoader(dataset, batch_size=2), tmp_path / "features",
                             progress=False)
    assert files
    features = FeatureDataset(tmp_path / "features", clips=CLIPS)
    assert len(features) == len(dataset)
