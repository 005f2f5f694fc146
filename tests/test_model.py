"""The full model (issue 8): shapes, gradients, ablation switches, backends, precomputed features,
configurable targets, backbone weight loading. Tiny inputs: 32x32 frames, 4 frames per clip."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.video import r3d_18

from rja_models.backbones import load_backbone_weights
from rja_models.config import ABLATIONS, ModelConfig, TargetConfig
from rja_models.metrics import ccc_loss
from rja_models.model import RJAModel

FRAMES, SIZE, SAMPLES = 4, 32, 2000


def tiny(clips: int = 2, **overrides) -> ModelConfig:
    return ModelConfig(clips=clips, clip_frames=FRAMES, image_size=SIZE, **overrides)


def raw_inputs(b: int, clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(b, clips, 3, FRAMES, SIZE, SIZE), torch.randn(b, clips, SAMPLES)


def features(b: int, clips: int, da: int = 512, dv: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, clips, da), torch.randn(b, clips, dv)


def params_without_grad(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


@pytest.mark.parametrize(("b", "clips"), [(1, 2), (2, 3)])
def test_raw_output_shapes_and_range(b, clips):
    model = RJAModel(tiny(clips))
    out = model(*raw_inputs(b, clips))
    assert out["clip"].shape == (b, clips, 2)
    assert out["frame"].shape == (b, clips * FRAMES, 2)
    assert out["clip"].abs().max() <= 1
    # Every frame of a clip carries the clip's prediction.
    assert torch.equal(out["frame"].view(b, clips, FRAMES, 2), out["clip"].unsqueeze(2).expand(-1, -1, FRAMES, -1))


@pytest.mark.parametrize(("b", "clips"), [(1, 1), (3, 4), (5, 16)])
def test_feature_output_shapes(b, clips):
    model = RJAModel(tiny(clips, use_backbones=False, da=64, dv=32))
    out = model(xa=torch.randn(b, clips, 64), xv=torch.randn(b, clips, 32))
    assert out["clip"].shape == (b, clips, 2)
    assert out["frame"].shape == (b, clips * FRAMES, 2)


def test_gradients_reach_every_parameter():
    model = RJAModel(tiny(2))
    out = model(*raw_inputs(2, 2))
    (out["frame"].sum() + out["clip"].square().sum()).backward()
    assert params_without_grad(model) == []


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_builds_and_trains(name):
    config = ModelConfig.ablation(name, base=tiny(3, use_backbones=False, da=48, dv=32, lstm_hidden=16))
    model = RJAModel(config)
    for key, value in ABLATIONS[name].items():
        assert getattr(model.config, key) == value
    out = model(xa=torch.randn(2, 3, 48), xv=torch.randn(2, 3, 32))
    out["frame"].sum().backward()
    assert params_without_grad(model) == []
    assert (model.fusion is not None) == config.uses_attention
    assert (model.joint_blstm is not None) == config.joint_blstm
    assert len(model.unimodal_blstm) == (len(model.dims) if config.unimodal_blstm else 0)
    if model.fusion is not None:
        assert model.fusion.w_ca.shape == (1 if config.shared_weights else config.iterations, 48, 48)


@pytest.mark.parametrize(("name", "encoders"), [("audio_only", (True, False)), ("visual_only", (False, True)),
                                                 ("concat", (True, True))])
def test_baselines_with_backbones(name, encoders):
    model = RJAModel(ModelConfig.ablation(name, base=tiny(2)))
    assert (model.audio_encoder is not None, model.visual_encoder is not None) == encoders
    frames, audio = raw_inputs(2, 2)
    out = model(frames if encoders[1] else None, audio if encoders[0] else None)
    out["clip"].sum().backward()
    assert params_without_grad(model) == []


def test_paper_table1_variants():
    assert ModelConfig.ablation("blstms_t2") == ModelConfig()  # the paper's best is the default
    t1 = ModelConfig.ablation("no_ublstm_t1")
    assert (t1.unimodal_blstm, t1.joint_blstm, t1.iterations) == (False, True, 1)
    assert ModelConfig.ablation("blstms_t4", shared_weights=True).shared_weights
    with pytest.raises(ValueError, match="unknown ablation"):
        ModelConfig.ablation("nope")


def test_precomputed_features_match_raw_path():
    torch.manual_seed(0)
    config = tiny(3)
    model = RJAModel(config).eval()
    frames, audio = raw_inputs(2, 3)
    with torch.no_grad():
        xa, xv = model.encode(frames, audio)
        assert xa.shape == (2, 3, 512) and xv.shape == (2, 3, 512)
        raw = model(frames, audio)
        pre = model(xa=xa, xv=xv)
        # A features-only model holds exactly the fusion part, so it takes the trained weights.
        head_only = RJAModel(config.replace(use_backbones=False)).eval()
        missing, unexpected = head_only.load_state_dict(model.state_dict(), strict=False)
        assert missing == [] and all(k.split(".")[0] in ("audio_encoder", "visual_encoder") for k in unexpected)
        features_only = head_only(xa=xa, xv=xv)
    for key in ("clip", "frame"):
        torch.testing.assert_close(pre[key], raw[key])
        torch.testing.assert_close(features_only[key], raw[key])


def test_features_only_model_has_no_backbones():
    model = RJAModel(tiny(2, use_backbones=False))
    assert model.audio_encoder is None and model.visual_encoder is None
    assert not any(n.startswith(("audio_encoder", "visual_encoder")) for n, _ in model.named_parameters())
    with pytest.raises(RuntimeError, match="use_backbones=False"):
        model(*raw_inputs(1, 2))


def test_fatigue_single_target_on_0_to_10():
    config = tiny(2, use_backbones=False, targets=TargetConfig(names=("fatigue",), low=0.0, high=10.0))
    model = RJAModel(config)
    with torch.no_grad():
        model.head[-1].bias.fill_(50.0)  # saturate: outputs must stay inside the range
        assert torch.allclose(model(xa=torch.randn(2, 2, 512), xv=torch.randn(2, 2, 512))["clip"],
                              torch.tensor(10.0))
        model.head[-1].bias.zero_()
    out = model(xa=torch.randn(4, 2, 512), xv=torch.randn(4, 2, 512))
    assert out["frame"].shape == (4, 2 * FRAMES, 1)
    assert out["frame"].min() >= 0 and out["frame"].max() <= 10
    labels = torch.rand(4, 2 * FRAMES, 1) * 10
    loss = ccc_loss(out["frame"], labels, torch.ones(4, 2 * FRAMES, dtype=torch.bool))
    loss.backward()
    assert loss.shape == () and 0 <= loss <= 2
    assert params_without_grad(model) == []


def test_input_validation():
    model = RJAModel(tiny(3, use_backbones=False))
    with pytest.raises(ValueError, match="L = clips = 3"):
        model(xa=torch.randn(1, 4, 512), xv=torch.randn(1, 4, 512))
    with pytest.raises(ValueError, match=r"xv must be \[B, L, 512\]"):
        model(xa=torch.randn(1, 3, 512))
    with pytest.raises(ValueError, match="agree on"):
        model(xa=torch.randn(1, 3, 512), xv=torch.randn(2, 3, 512))
    model = RJAModel(tiny(2))
    frames, audio = raw_inputs(1, 2)
    with pytest.raises(ValueError, match="F=4"):
        model(frames[:, :, :, :2], audio)
    with pytest.raises(ValueError, match="not both"):
        model(frames, audio, xa=torch.randn(1, 2, 512), xv=torch.randn(1, 2, 512))


def test_config_round_trip_and_validation():
    config = ModelConfig.ablation("visual_only", targets=TargetConfig(("fatigue",), 0, 10), dropout=0.5)
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and isinstance(restored.targets.names, tuple)
    with pytest.raises(ValueError, match="fusion"):
        ModelConfig(fusion="sum")
    with pytest.raises(ValueError, match="audio-guided|audio branch"):
        ModelConfig(fusion="visual")
    with pytest.raises(ValueError, match="use_backbones=False"):
        ModelConfig(da=256)
    with pytest.raises(ValueError, match="must be even"):
        ModelConfig(use_backbones=False, dv=33)
    # An audio-only model on features whose visual part is empty (extracted by an audio-only model).
    audio_only = RJAModel(ModelConfig.ablation("audio_only", use_backbones=False, dv=0, clips=2))
    assert audio_only(xa=torch.randn(1, 2, 512), xv=torch.zeros(1, 2, 0))["clip"].shape == (1, 2, 2)
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="low < high"):
        TargetConfig(low=1.0, high=1.0)


def test_load_backbone_weights_adapts_and_reports(tmp_path):
    source = resnet18(weights=None)  # ImageNet layout: 3-channel conv1 and an fc classifier
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "resnet18.pt"
    torch.save({"state_dict": state}, path)
    with pytest.warns(UserWarning, match=r"unexpected keys \['fc.bias', 'fc.weight'\]"):
        model = RJAModel(tiny(2, audio_backbone_weights=str(path)))
    net = model.audio_encoder.net
    torch.testing.assert_close(net.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(net.layer3[0].conv2.weight, source.layer3[0].conv2.weight)
    with pytest.warns(UserWarning, match="unexpected"):
        missing, unexpected = load_backbone_weights(net, path)
    assert missing == [] and unexpected == ["fc.bias", "fc.weight"]

    video = r3d_18(weights=None).state_dict()
    del video["layer4.1.conv2.1.running_var"]
    video["layer1.0.conv1.0.weight"] = torch.zeros(3, 3, 3, 3, 3)  # wrong shape: not loaded
    torch.save(video, path)
    with pytest.warns(UserWarning, match="shape mismatches"):
        missing, unexpected = load_backbone_weights(model.visual_encoder.net, path)
    assert missing == ["layer1.0.conv1.0.weight", "layer4.1.conv2.1.running_var"]
    assert unexpected == ["fc.bias", "fc.weight", "layer1.0.conv1.0.weight"]
