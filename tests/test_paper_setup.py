"""The options that reproduce the authors' released experiment (docs/PAPER_SETUP.md) against known
values, the output range and frame timing a wrong model would get wrong, audio windows in seconds at
two frame rates, and configs/affwild2.yaml training end to end on a tiny Aff-Wild2-layout tree."""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio
from data_fixtures import small_tree
from torch import nn
from torchvision.models import resnet18
from torchvision.models.video import r2plus1d_18

from rja_models import evaluate, predict, train
from rja_models.backbones import AudioEncoder
from rja_models.checkpoint import model_from_checkpoint
from rja_models.config import ModelConfig
from rja_models.data import (
    AffWild2Dataset,
    AudioWindow,
    VideoFileDataset,
    VideoInfo,
    VideoReader,
    clip_audio_samples,
    jitter_clips,
    probe_video,
    write_av_file,
)
from rja_models.metrics import ccc_loss, moving_average, postprocess
from rja_models.model import _BLSTM, RJAModel
from rja_models.training.evaluation import VideoSeries, ccc_report
from rja_models.training.loop import lr_factor

CONFIGS = Path(__file__).parents[1] / "configs"
SMALL = {"clips": 2, "clip_frames": 4, "image_size": 32, "lstm_hidden": 8, "head_hidden": 8, "pooling_hidden": 8,
         "n_mels": 16}


def tiny_fusion(**overrides: object) -> RJAModel:
    """A fusion-only model (features in) for the head and BLSTM checks."""
    return RJAModel(ModelConfig(use_backbones=False, da=8, dv=8, clips=2, clip_frames=3, lstm_hidden=4,
                                head_hidden=4, **overrides)).eval()


# --- what a wrong model gets wrong -------------------------------------------------------------------


def test_output_head_spans_the_whole_target_range():
    """tanh, not sigmoid: valence can be negative. Head zeroed but its last bias: out = mid + half tanh(b)."""
    model = tiny_fusion()
    last = model.head[-1]
    xa, xv = torch.randn(1, 2, 8), torch.randn(1, 2, 8)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-3.0, 0.5]))
    clip = model(xa=xa, xv=xv)["clip"]
    assert torch.allclose(clip, torch.tensor([math.tanh(-3.0), math.tanh(0.5)]).expand(1, 2, 2), atol=1e-6)
    assert (clip[..., 0] < -0.99).all()
    # [low, high] = [0, 10]: 5 + 5 tanh(b).
    model = RJAModel(ModelConfig(use_backbones=False, da=8, dv=8, clips=2, clip_frames=3, lstm_hidden=4,
                                 head_hidden=4, targets={"names": ["fatigue"], "low": 0.0, "high": 10.0})).eval()
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.fill_(-1.0)
    assert torch.allclose(model(xa=xa, xv=xv)["clip"], torch.full((1, 2, 1), 5 + 5 * math.tanh(-1.0)), atol=1e-6)
    # output_activation="none" (the authors'): the head's raw value, scored after clipping.
    model = tiny_fusion(output_activation="none")
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.copy_(torch.tensor([-3.0, 0.5]))
    assert torch.allclose(model(xa=xa, xv=xv)["clip"], torch.tensor([-3.0, 0.5]).expand(1, 2, 2))


def test_frame_time_around_the_video():
    """Past the last frame, frame k is (k - n + 1) nominal intervals after the last one (before the
    first, k intervals): an off-by-one here shifts every padded clip's audio by a frame."""
    stamps = np.array([0.0, 0.1, 0.2, 0.35])  # a dropped frame: the last interval is longer
    info = VideoInfo(Path("x.mp4"), 4, 10.0, stamps, np.arange(4), 8, 8, True)
    assert [info.frame_time(i) for i in range(4)] == stamps.tolist()
    assert info.frame_time(4) == pytest.approx(0.45)
    assert info.frame_time(6) == pytest.approx(0.65)
    assert info.frame_time(-1) == pytest.approx(-0.1) and info.frame_time(-31) == pytest.approx(-3.1)


# --- the new options, against known values -----------------------------------------------------------


def test_blstm_released_structure_known_values():
    torch.manual_seed(0)
    blstm = _BLSTM(6, 4, layers=2, dropout=0.1, residual=True, learned_init=True, l2norm=True).eval()
    assert blstm.lstm.num_layers == 2 and blstm.lstm.dropout == pytest.approx(0.1)
    assert blstm.init_state.shape == (8, 4)  # (h0, c0) of 2 layers x 2 directions
    x = torch.randn(3, 5, 6)
    out = blstm(x)
    # By hand: the LSTM from the learned states, [x, out] through the projection, unit L2 norm.
    h0 = blstm.init_state[:4, None].expand(4, 3, 4).contiguous()
    c0 = blstm.init_state[4:, None].expand(4, 3, 4).contiguous()
    seq = blstm.lstm(x, (h0, c0))[0]
    expected = F.normalize(blstm.residual[1](torch.cat([x, seq], dim=-1)), dim=-1)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, 5), atol=1e-5)
    assert not torch.allclose(blstm.lstm(x)[0], seq)  # the learned states are used
    out.sum().backward()
    assert blstm.init_state.grad is not None and blstm.init_state.grad.abs().sum() > 0
    plain = _BLSTM(6, 4)
    assert plain.residual is None and plain.init_state is None and plain(x).shape == (3, 5, 8)


def test_feature_l2norm_separate_heads_and_xavier_init():
    model = tiny_fusion(separate_heads=True, head_input_dropout=False, xavier_init=True, feature_l2norm=True,
                        unimodal_blstm=False, joint_blstm=False, fusion="concat")
    assert len(model.head.heads) == 2 and not isinstance(model.head.heads[0][0], nn.Dropout)
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert linears and all((m.bias == 0).all() for m in linears)
    with torch.no_grad():
        model.head.heads[0][-1].weight.zero_()
        model.head.heads[0][-1].bias.fill_(0.25)
    xa, xv = torch.randn(1, 2, 8), torch.randn(1, 2, 8)
    out = model(xa=xa, xv=xv)["clip"]
    assert torch.allclose(out[..., 0], torch.full((1, 2), math.tanh(0.25)))  # head 0 alone gives valence
    # The features are L2-normalised first: scaling them changes nothing.
    assert torch.allclose(model(xa=7 * xa, xv=0.1 * xv)["clip"], out, atol=1e-6)


def test_frame_rows_per_clip():
    xa, xv = torch.randn(2, 2, 8), torch.randn(2, 2, 8)
    assert tiny_fusion()(xa=xa, xv=xv)["frame"].shape == (2, 6, 2)
    assert tiny_fusion(frame_dilation=4)(xa=xa, xv=xv)["frame"].shape == (2, 24, 2)
    out = tiny_fusion(frame_dilation=4, label_frame="last")(xa=xa, xv=xv)
    assert torch.equal(out["frame"], out["clip"])


def test_frozen_backbones_keep_weights_and_batchnorm_statistics():
    model = RJAModel(ModelConfig(**SMALL, freeze_backbones=True, visual_backbone="r2plus1d_18"))
    model.train()
    assert not model.audio_encoder.net.training and not model.visual_encoder.net.training
    assert model.visual_encoder.pool.training and model.head.training
    assert not any(p.requires_grad for p in model.audio_encoder.net.parameters())
    assert all(p.requires_grad for p in model.visual_encoder.pool.parameters())
    # torchvision's R(2+1)D-18: a (1, 7, 7) spatial then a (3, 1, 1) temporal convolution in the stem.
    assert model.visual_encoder.net.stem[0].kernel_size == (1, 7, 7)
    assert model.visual_encoder.net.stem[3].kernel_size == (3, 1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items() if ".net." in k}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.rand(2, 2, 3, 4, 32, 32), torch.randn(2, 2, 4000))["frame"].sum().backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # running stats included


def test_released_pooling_known_values():
    from rja_models.backbones import ReleasedPooling, map_positions

    assert map_positions(112) == 49 and map_positions(32) == 4
    torch.manual_seed(0)
    pool = ReleasedPooling(512, 512, positions=4, hidden=49)
    fmap, audio = torch.randn(3, 512, 2, 2), torch.randn(3, 512)
    unit = fmap / fmap.flatten(1).norm(dim=1).view(3, 1, 1, 1)  # the whole map L2-normalised, as theirs
    positions = unit.flatten(2).mT  # [3, 4 positions, 512 channels]
    v = torch.relu(pool.visual_in(positions))
    a = torch.relu(pool.audio_in(audio / audio.norm(dim=1, keepdim=True)))
    z = torch.stack([pool.score(torch.tanh(pool.visual_score(v[:, p]) + pool.audio_score(a)[:, p:p + 1]))[:, 0]
                     for p in range(4)], dim=1)
    expected = pool.out((torch.softmax(z, dim=1)[..., None] * positions).sum(1))
    assert torch.allclose(pool(fmap, audio), expected, atol=1e-6)
    with torch.no_grad():
        pool.score.weight.zero_()  # uniform attention: the projected mean of the normalised positions
    assert torch.allclose(pool(fmap, audio), pool.out(positions.mean(1)), atol=1e-6)
    with pytest.raises(ValueError, match="positions"):
        pool(torch.randn(1, 512, 3, 3), torch.randn(1, 512))


def test_audio_front_end_fixed_normalisation():
    enc = AudioEncoder(44100, 64, 1024, 441, 882, "fixed", -14.8, 19.895).eval()
    assert enc.melspec.spectrogram.win_length == 882 and enc.melspec.spectrogram.n_fft == 1024
    seen = {}
    enc.net.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    audio = torch.randn(2, 45599)
    enc(audio)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=44100, n_fft=1024, win_length=882, hop_length=441,
                                               n_mels=64, window_fn=torch.hann_window)
    db = torchaudio.transforms.AmplitudeToDB("power", 80)
    expected = torch.stack([(db(mel(a[None])) + 14.8) / 19.895 for a in audio])  # per clip, as their files
    assert seen["x"].shape == (2, 1, 64, 104)  # 45599 samples, hop 441: 104 frames
    assert torch.allclose(seen["x"], expected, atol=1e-4)


def test_ccc_sum_loss_and_delayed_step_schedule():
    pred, target = torch.randn(50, 2), torch.randn(50, 2)
    assert torch.allclose(ccc_loss(pred, target, reduction="sum"), 2 * ccc_loss(pred, target))
    args = argparse.Namespace(warmup_epochs=0.0, schedule="step", step_gamma=0.8, step_epochs=2.0,
                              step_start_epochs=5.0, step_start_factor=0.1, epochs=50)
    steps = 10
    # The authors' main.py + train.py: Adam at 1e-4 for epochs 0..5, then set_lr(1e-3 * 0.8 ** ((epoch - 5) // 2)).
    for epoch in range(20):
        expected = 0.8 ** ((epoch - 5) // 2) if epoch > 5 else 0.1
        for step in (epoch * steps, epoch * steps + steps - 1):
            assert lr_factor(args, step, steps) == pytest.approx(expected)
    assert [round(1e-3 * lr_factor(args, e * steps, steps), 6) for e in (0, 5, 6, 7, 8, 9)] == [
        1e-4, 1e-4, 1e-3, 8e-4, 8e-4, 6.4e-4]
    # Without a start, the step schedule is the plain one.
    plain = argparse.Namespace(**{**vars(args), "step_start_epochs": 0.0})
    assert [lr_factor(plain, e * steps, steps) for e in (0, 1, 2, 3, 4)] == pytest.approx([1, 1, 0.8, 0.8, 0.64])


def test_color_jitter_known_values():
    frames = torch.rand(3, 3, 2, 4, 4)
    g = torch.Generator().manual_seed(5)
    b, c = 1 + (torch.rand(3, generator=g) * 2 - 1) * 0.2, 1 + (torch.rand(3, generator=g) * 2 - 1) * 0.2
    out = jitter_clips(frames, 0.2, torch.Generator().manual_seed(5))
    for clip in range(3):
        x = (frames[clip] * b[clip]).clamp(0, 1)
        for t in range(2):
            gray = (0.299 * x[0, t] + 0.587 * x[1, t] + 0.114 * x[2, t]).mean()
            assert torch.allclose(out[clip, :, t], (c[clip] * x[:, t] + (1 - c[clip]) * gray).clamp(0, 1), atol=1e-6)
    assert torch.allclose(jitter_clips(frames, 0.0), frames)


def test_backbone_weights_by_prefix_with_a_four_channel_stem(tmp_path):
    audio, video = resnet18(weights=None), r2plus1d_18(weights=None)
    file = tsav_weights(tmp_path / "tsav.pth.tar", audio, video)
    config = ModelConfig(**SMALL, visual_backbone="r2plus1d_18", audio_backbone_weights=str(file),
                         visual_backbone_weights=str(file), audio_backbone_prefix="audio_model.resnet.",
                         visual_backbone_prefix="video_model.r2plus1d.")
    model = RJAModel(config)
    assert torch.equal(model.visual_encoder.net.stem[0].weight, video.stem[0].weight)
    assert torch.equal(model.visual_encoder.net.layer4[1].conv2[0][3].weight, video.layer4[1].conv2[0][3].weight)
    assert torch.equal(model.audio_encoder.net.conv1.weight, audio.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.audio_encoder.net.layer3[0].bn1.running_var, audio.layer3[0].bn1.running_var)


def tsav_weights(path: Path, audio: nn.Module, video: nn.Module) -> Path:
    """A file laid out as the TSAV checkpoint the authors load (`{"state_dict": ...}`, both networks by
    prefix, a 1-channel audio conv1, a 4-channel visual stem, a joint fc)."""
    state = {f"audio_model.resnet.{k}": v for k, v in audio.state_dict().items() if not k.startswith("fc.")}
    state["audio_model.resnet.conv1.weight"] = audio.conv1.weight.sum(1, keepdim=True)
    for k, v in video.state_dict().items():
        if not k.startswith("fc."):
            state[f"video_model.r2plus1d.{k}"] = v
    stem = video.stem[0].weight
    state["video_model.r2plus1d.stem.0.weight"] = torch.cat([stem, torch.randn_like(stem[:, :1])], dim=1)
    state["fc.1.weight"], state["fc.1.bias"] = torch.randn(17, 1024), torch.zeros(17)
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path


# --- scoring ---------------------------------------------------------------------------------------


def test_moving_average_hand_computed_and_against_scipy():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert moving_average(x, 1).tolist() == x.tolist()
    assert moving_average(x, 2).tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]  # mean of x[i-1], x[i]; 0 before
    assert moving_average(x, 3) == pytest.approx([1.0, 2.0, 3.0, 4.0, 3.0])
    assert moving_average(x, 4) == pytest.approx([0.75, 1.5, 2.5, 3.5, 3.0])  # x[i - 2 : i + 2]
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for n in (1, 19, 20, 49, 50, 51, 333):
        y = rng.normal(size=n)
        for size in (1, 2, 5, 20, 50):
            np.testing.assert_allclose(moving_average(y, size), ndimage.uniform_filter1d(y, size, mode="constant"),
                                       atol=1e-12)


def test_postprocess_as_the_authors_val_py():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    pred = rng.normal(scale=0.9, size=(300, 2))
    out = postprocess(pred, ("valence", "arousal"))
    np.testing.assert_allclose(out[:, 0], ndimage.uniform_filter1d(np.clip(pred[:, 0], -1, 1), 20, mode="constant"))
    np.testing.assert_allclose(out[:, 1], ndimage.uniform_filter1d(np.clip(pred[:, 1], -1, 1), 50, mode="constant"))
    fatigue = postprocess(pred[:, :1] * 20, ("fatigue",), 0, 10)[:, 0]  # no window for it: clipped only
    np.testing.assert_allclose(fatigue, np.clip(pred[:, 0] * 20, 0, 10))


def test_ccc_report_gives_raw_and_postprocessed():
    rng = np.random.default_rng(2)
    labels = np.cumsum(rng.normal(size=(200, 2)), axis=0) / 20
    pred = labels + rng.normal(scale=0.5, size=labels.shape)
    mask = np.ones(200, bool)
    mask[:10] = False
    series = {"v": VideoSeries(pred.astype(np.float32), labels.astype(np.float32), mask, np.ones(200, bool))}
    report = ccc_report(series, ("valence", "arousal"))
    smoothed = postprocess(pred.astype(np.float32), ("valence", "arousal"))

    def ccc(p: np.ndarray, t: np.ndarray) -> float:
        return 2 * np.cov(p, t, bias=True)[0, 1] / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)

    for j, name in enumerate(("valence", "arousal")):
        assert report["overall"][name] == pytest.approx(ccc(pred[mask, j], labels[mask, j]), rel=1e-5)
        assert report["postprocessed"]["overall"][name] == pytest.approx(ccc(smoothed[mask, j], labels[mask, j]),
                                                                        rel=1e-5)
    assert report["postprocessed"]["overall"]["mean"] > report["overall"]["mean"]  # smoothing the noise helps


# --- audio windows in seconds ----------------------------------------------------------------------

SR = 16000


def chirp(seconds: float, sample_rate: int) -> np.ndarray:
    """A rising chirp over a steady tone: every moment sounds different, and no band is noise-like (AAC
    codes noise with the decoder's random generator: decoded noise depends on where decoding started)."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.4 * np.sin(2 * np.pi * (200 * t + 400 * t**2)) + 0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def same_content(tmp_path: Path, fps: float | Fraction, seconds: float = 3.0) -> Path:
    """A video at ``fps`` whose audio is the same 3 s whatever the frame rate."""
    audio = chirp(seconds, SR)
    n = int(seconds * float(fps))
    frames = np.zeros((n, 16, 16, 3), np.uint8)
    path = tmp_path / f"same_{float(fps):.2f}.mp4"
    write_av_file(path, frames, fps=fps, audio=audio, sample_rate=SR)
    return path


@pytest.fixture(scope="module")
def two_rates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rates")
    return {"15": same_content(base, 15), "29.97": same_content(base, Fraction(30000, 1001))}


def test_audio_of_the_same_moment_matches_at_two_frame_rates(two_rates):
    window = AudioWindow(0.4, SR, "start")
    with VideoReader(two_rates["15"], sample_rate=SR) as slow, VideoReader(two_rates["29.97"], sample_rate=SR) as ntsc:
        # Frame 0 of both: t = 0.
        np.testing.assert_allclose(slow.clip_audio([0], [3], window), ntsc.clip_audio([0], [7], window), atol=1e-4)
        for frame in (30, 47, 61):  # a 29.97 fps clip's audio is the 15 fps file's audio at the same time
            t = ntsc.info.frame_time(frame)
            got = ntsc.clip_audio([frame], [frame + 7], window)[0]
            np.testing.assert_allclose(got, slow.read_audio(t, window.samples), atol=1e-4)
            assert np.abs(got[-window.samples // 4:]).mean() > 0.1  # no zero padding inside the video
        for frame in (15, 22):
            t = slow.info.frame_time(frame)
            np.testing.assert_allclose(slow.clip_audio([frame], [frame + 3], window)[0],
                                       ntsc.read_audio(t, window.samples), atol=1e-4)
        # "end": the window ends at the clip's last frame.
        end = AudioWindow(0.4, SR, "end")
        t_last = ntsc.info.frame_time(40)
        np.testing.assert_allclose(ntsc.clip_audio([33], [40], end)[0], slow.read_audio(t_last - 0.4, end.samples),
                                   atol=1e-4)


def test_a_15_fps_model_gets_full_audio_on_a_2997_fps_video(two_rates):
    """A model trained on 15 fps 4-frame clips hears 4267 samples (0.267 s) per clip: at 29.97 fps
    a clip is 0.133 s long, and its audio is still the 0.267 s from its first frame, never zeros."""
    samples = clip_audio_samples(4, 15, SR)
    config = ModelConfig(**SMALL, sample_rate=SR, audio_seconds=samples / SR)
    ds = VideoFileDataset.for_model(two_rates["29.97"], config)
    assert ds.audio_samples == samples
    with VideoReader(two_rates["15"], sample_rate=SR) as slow:
        for item in (1, 3):
            audio = ds[item]["audio"]
            for clip in range(2):
                t = ds.info.frame_time(ds.starts[item] + 4 * clip)
                np.testing.assert_allclose(audio[clip].numpy(), slow.read_audio(t, samples), atol=1e-4)
                assert audio[clip, samples // 2:].abs().mean() > 0.1
    # Old checkpoints stored the window in samples only.
    old = VideoFileDataset.for_model(two_rates["29.97"], ModelConfig(**SMALL, sample_rate=SR),
                                     {"data": {"audio_samples": samples}})
    assert old.audio_samples == samples and torch.equal(old[1]["audio"], ds[1]["audio"])


# --- configs/affwild2.yaml end to end --------------------------------------------------------------

TINY = ["--clips", "4", "--clip-frames", "2", "--frame-dilation", "2", "--image-size", "32", "--epochs", "2",
        "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--quiet", "--no-tensorboard"]


@pytest.fixture(scope="module")
def released_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("released")
    tree = small_tree(base / "tree")
    torch.manual_seed(0)
    weights = tsav_weights(base / "tsav.pth.tar", resnet18(weights=None), r2plus1d_18(weights=None))
    out = base / "run"
    with pytest.warns(UserWarning, match="--amp is for CUDA"):
        summary = train.main(["--config", str(CONFIGS / "affwild2.yaml"), "--data-root", str(tree), *TINY,
                              "--audio-backbone-weights", str(weights), "--visual-backbone-weights", str(weights),
                              "--out", str(out)])
    return {"tree": tree, "out": out, "summary": summary, "weights": weights, "base": base}


def test_affwild2_config_trains_the_released_setup(released_run):
    summary, out = released_run["summary"], released_run["out"]
    assert summary["epochs"] == 2 and set(summary["val_postprocessed"]) == {"valence", "arousal", "mean"}
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("val" in h and "val_postprocessed" in h for h in history)
    model, config, _ = model_from_checkpoint(out / "best.pt")
    assert (config.clips, config.clip_frames, config.frame_dilation, config.window_layout, config.label_frame) == (
        4, 2, 2, "tiled", "last")
    assert (config.sample_rate, config.audio_seconds, config.audio_anchor, config.spec_norm) == (
        44100, 1.034, "end", "fixed")
    assert (config.fusion, config.iterations, config.separate_heads, config.output_activation) == (
        "released", 1, True, "none")
    # Frozen: after two epochs the backbones still hold the file's weights.
    state = torch.load(released_run["weights"], weights_only=True)["state_dict"]
    assert torch.equal(model.visual_encoder.net.stem[0].weight, state["video_model.r2plus1d.stem.0.weight"][:, :3])
    assert torch.equal(model.audio_encoder.net.layer1[0].bn1.running_mean,
                       state["audio_model.resnet.layer1.0.bn1.running_mean"])
    # Adam, held at 0.1 x 1e-3 for epochs 0..5 (the authors' 1e-4 before train.py's schedule starts).
    assert [h["lr"] for h in history] == pytest.approx([1e-4, 1e-4])


def test_released_windows_on_the_tree(released_run):
    tree = released_run["tree"]
    kwargs = {"clips": 4, "clip_frames": 2, "dilation": 2, "layout": "tiled", "label_frame": "last",
              "image_size": 32, "progress": False, "visual_only": True}
    val = AffWild2Dataset(tree, "val", **kwargs)
    (seq,) = val.sequences
    n = len(seq.labels)
    rows = np.concatenate([val[i]["frame_index"].numpy() for i in range(len(val))])
    assert sorted(rows[rows < n].tolist()) == list(range(n))  # every frame predicted once
    first = val[0]
    assert first["start_frame"] == -3 and first["frame_index"].tolist() == [0, 4, 8, 12]
    assert torch.equal(first["labels"], torch.from_numpy(seq.labels[[0, 4, 8, 12]]))
    with pytest.raises(ValueError, match="tiled"):
        AffWild2Dataset(tree, "val", stride=8, **kwargs)  # the tiled layout places its windows itself
    train_set = AffWild2Dataset(tree, "train", training=True, **kwargs)
    for i in range(len(train_set)):
        s, start = train_set.index[i]
        assert start + 15 < len(train_set.sequences[s].labels)  # training windows end inside the video
        item = train_set[i]
        assert item["mask"].any()


def test_evaluate_and_predict_on_the_released_setup(released_run, tmp_path, monkeypatch, capsys):
    out = released_run["out"]
    results = evaluate.main(["--checkpoint", str(out / "best.pt"), "--split", "val", "--json", str(tmp_path / "r.json"),
                             "--csv", str(tmp_path / "r.csv"), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "raw per-frame CCC" in printed and "postprocessed CCC" in printed
    val = AffWild2Dataset(released_run["tree"], "val", clips=4, clip_frames=2, dilation=2, layout="tiled",
                          label_frame="last", image_size=32, progress=False, visual_only=True)
    (seq,) = val.sequences
    # The ABAW protocol: every frame with a label (not -5) once, also those without a face crop.
    assert results["val"]["frames"] == int(seq.valid.sum()) > int(seq.mask.sum())
    assert results["val"]["frames_without_face"] == int((seq.valid & ~seq.has_crop).sum())
    assert set(results["val"]["postprocessed"]) == {"overall", "videos"}
    assert {"raw", "postprocessed"} <= {line.split(",")[-1] for line in (tmp_path / "r.csv").read_text().split()}
    # predict on a 29.97 fps video: each clip hears the 1.034 s ending at its last frame, cut by time.
    fps = Fraction(30000, 1001)
    audio = chirp(3.0, 44100)
    video = tmp_path / "ntsc.mp4"
    write_av_file(video, np.zeros((80, 32, 32, 3), np.uint8), fps=fps, audio=audio, sample_rate=44100)
    heard = []
    original = AudioEncoder.forward
    monkeypatch.setattr(AudioEncoder, "forward", lambda self, a: heard.append(a.clone()) or original(self, a))
    csv_path = predict.main([str(video), "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "p"),
                             "--quiet", "--device", "cpu", "--whole-frame"])
    assert len(csv_path.read_text().splitlines()) == 81
    heard = torch.cat(heard)  # [windows * clips, 45599], in window order
    _, config, _ = model_from_checkpoint(out / "best.pt")
    ds = VideoFileDataset.for_model(video, config)
    info = probe_video(video)
    assert heard.shape == (len(ds) * 4, 45599)
    checked = 0
    with VideoReader(video, sample_rate=44100) as reader:
        for row in range(0, len(heard), 3):
            start, clip = ds.starts[row // 4], row % 4
            t_last = info.frame_time(start + 4 * (clip + 1) - 1)
            t_first = round((t_last - 45599 / 44100) * 44100) / 44100  # on the sample grid
            before = max(0, min(45599, round(-t_first * 44100)))
            assert not heard[row, :before].any()  # before the video starts: silence
            if t_first > 0.1:  # (AAC's first frame decodes differently after different seeks)
                np.testing.assert_allclose(heard[row].numpy(), reader.read_audio(t_first, 45599), atol=1e-4)
                checked += 1
            if t_first > 0 and t_last < info.frame_time(79):
                assert heard[row].abs().mean() > 0.1  # a whole window inside the video: no zeros
    assert checked >= 3
