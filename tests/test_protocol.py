"""The official (ABAW) evaluation protocol on a generated Aff-Wild2 tree with missing face crops:
every frame whose label is not -5 is scored, a frame without a crop with the prediction of its
clip, whose input shows the neighbouring crop in its place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import small_tree
from PIL import Image
from test_predict_frames import TINY

from rja_models import evaluate
from rja_models.checkpoint import model_from_checkpoint, save_checkpoint
from rja_models.config import ModelConfig
from rja_models.data import AffWild2Dataset, dataset_options
from rja_models.data.video import fit_image
from rja_models.inference.windows import video_series
from rja_models.model import RJAModel
from rja_models.training.evaluation import predict_windows

REMOVED = range(10, 14)  # 0-based frames whose crops are deleted: clip 0 of the window at 8 shows 8, 9, 9, 9


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory):
    root = small_tree(tmp_path_factory.mktemp("protocol") / "tree")
    for frame in REMOVED:
        (root / "cropped_aligned" / "synth_002" / f"{frame + 1:05d}.jpg").unlink()
    checkpoint = root.parent / "tiny.pt"
    torch.manual_seed(0)
    save_checkpoint(checkpoint, RJAModel(ModelConfig(**TINY)))
    return {"root": root, "checkpoint": checkpoint}


def annotation(root) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N, 2], valid [N]) of the validation video, read here from the text."""
    lines = (root / "VA_Estimation_Challenge" / "Validation_Set" / "synth_002.txt").read_text().split()[1:]
    values = np.array([[float(v) for v in line.split(",")] for line in lines])
    return values, ~(values == -5).any(axis=1)


def ccc(p: np.ndarray, t: np.ndarray) -> float:
    return 2 * np.cov(p, t, bias=True)[0, 1] / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)


def test_every_labelled_frame_is_scored(tree, tmp_path, capsys):
    root = tree["root"]
    results = evaluate.main(["--checkpoint", str(tree["checkpoint"]), "--data", "affwild2", "--data-root", str(root),
                             "--split", "val", "--device", "cpu", "--json", str(tmp_path / "r.json")])
    labels, valid = annotation(root)
    crops = root / "cropped_aligned" / "synth_002"
    has_crop = np.array([(crops / f"{i + 1:05d}.jpg").exists() for i in range(len(labels))])
    val = results["val"]
    assert val["frames"] == valid.sum() == 32
    assert val["frames_without_face"] == (valid & ~has_crop).sum() == 6  # 2 generated + the 4 removed
    assert "32 frames, 6 without a face crop" in capsys.readouterr().out

    # The series evaluate scores, and its frames without a crop: each has its clip's prediction, the
    # model's output on a clip that shows the previous crop in the missing ones' place (built here by hand).
    model, config, _ = model_from_checkpoint(tree["checkpoint"])
    dataset = AffWild2Dataset(root, "val", progress=False, **dataset_options(config))
    (series,) = video_series(predict_windows(model, torch.utils.data.DataLoader(dataset, batch_size=2),
                                             torch.device("cpu"))).values()
    item = dataset[1]
    assert item["start_frame"] == 8
    images = [fit_image(Image.open(crops / f"{k + 1:05d}.jpg"), 32) for k in (8, 9, 9, 9, 9, 9, 14, 15)]
    clips = torch.from_numpy(np.stack(images)).view(2, 4, 32, 32, 3).permute(0, 4, 1, 2, 3).float() / 255
    with torch.no_grad():
        by_hand = model.eval()(clips[None], item["audio"][None])["clip"][0].numpy()
    np.testing.assert_allclose(series.pred[10:12], np.repeat(by_hand[:1], 2, axis=0), atol=1e-5)
    np.testing.assert_allclose(series.pred[12:14], np.repeat(by_hand[1:], 2, axis=0), atol=1e-5)

    # The CCC over every frame with a label, by hand, is evaluate's; without the crop-less frames it differs.
    for j, name in enumerate(("valence", "arousal")):
        assert val["overall"][name] == pytest.approx(ccc(series.pred[valid, j], labels[valid, j]), rel=1e-4)
        with_crop = valid & has_crop
        assert val["overall"][name] != pytest.approx(ccc(series.pred[with_crop, j], labels[with_crop, j]), rel=1e-4)


def test_training_still_skips_frames_without_a_crop(tree):
    root = tree["root"]
    _, config, _ = model_from_checkpoint(tree["checkpoint"])
    item = AffWild2Dataset(root, "val", progress=False, **dataset_options(config))[1]
    rows = item["frame_index"].numpy()  # frames 8..15: 8 has a -5 label, 10..13 no crop
    _, valid = annotation(root)
    assert item["scored"].tolist() == valid[rows].tolist()
    assert item["face"].tolist() == (~np.isin(rows, list(REMOVED))).tolist()
    assert item["mask"].tolist() == (item["scored"] & item["face"]).tolist()  # the rows trained on
