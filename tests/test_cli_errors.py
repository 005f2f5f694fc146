"""Every bad input of train, evaluate, predict and ablate is one line on stderr naming the option or
file, exit code 2, no traceback (`rja_models.cli.run_command`). In process (`main(argv)`), and a few
end to end in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from test_train import feature_args, make_feature_data

from rja_kernels import available_backends
from rja_models import ablate, evaluate, predict, train
from rja_models.checkpoint import load_checkpoint, save_checkpoint
from rja_models.config import ModelConfig
from rja_models.data import write_av_file
from rja_models.model import RJAModel

Files = dict[str, Path]


class _RunsCode:
    """Pickles as a call of os.system: a file that would run code if unpickled without weights_only."""

    def __reduce__(self) -> tuple:
        return os.system, ("echo CODE-WAS-RUN",)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """A tiny trained run on features (best.pt, last.pt), a video, and bad files of every kind."""
    base = tmp_path_factory.mktemp("bad-input")
    features = make_feature_data(base / "features")
    run = base / "run"
    train.main(feature_args(features, run, "--epochs", "1"))
    f: Files = {"base": base, "features": features, "run": run, "best": run / "best.pt", "last": run / "last.pt",
                "missing": base / "no-such-file.pt", "folder": base / "a-folder", "text": base / "notes.txt",
                "empty_dir": base / "empty", "no_run": base / "no-run"}
    f["folder"].mkdir()
    f["empty_dir"].mkdir()
    f["text"].write_text("not a checkpoint\n")
    f["video"] = base / "clip.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    write_av_file(f["video"], frames, fps=15.0, audio=np.zeros(16000, np.float32))
    f["silent"] = base / "silent.mp4"
    write_av_file(f["silent"], frames, fps=15.0, audio=None)
    for name, path in bad_checkpoints(base, f["last"]).items():
        f[name] = path
    for key, (name, text) in CONFIG_FILES.items():
        f[key] = base / name
        f[key].write_bytes(text) if isinstance(text, bytes) else f[key].write_text(text)
    return f


def bad_checkpoints(base: Path, good: Path) -> Files:
    """One file per way a checkpoint can be wrong (the keys are BAD_CHECKPOINTS' kinds)."""
    out = {k: base / f"{k}.pt" for k in BAD_CHECKPOINTS}
    data = good.read_bytes()
    out["empty"].write_bytes(b"")
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["not_torch"].write_text("hello\n")
    torch.save({"config": {}, "model": _RunsCode()}, out["code"])
    torch.save([1, 2, 3], out["list"])
    torch.save({"weight": torch.zeros(2)}, out["state_dict"])
    ckpt = load_checkpoint(good)
    torch.save({**ckpt, "format_version": 99}, out["newer"])
    torch.save({**ckpt, "config": {**ckpt["config"], "future_switch": True}}, out["unknown_field"])
    weights = dict(ckpt["model"])
    weights.pop(next(iter(weights)))
    torch.save({**ckpt, "model": weights}, out["missing_weights"])
    return out


# kind -> what the message says
BAD_CHECKPOINTS = {
    "empty": "is empty",
    "truncated": "is truncated",
    "not_torch": "not a checkpoint",
    "code": "contains code objects",
    "list": "not an rja_models checkpoint",
    "state_dict": "not an rja_models checkpoint",
    "newer": "incompatible (newer) version",
    "unknown_field": "incompatible version",
    "missing_weights": "do not fit the model",
}


def fails_with_one_line(module: ModuleType, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run `module.main(argv)`: it must exit with code 2 and print one error line (after argparse's
    one-line usage, for argparse's own errors) and no traceback; returns the error line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 2 and all(line.startswith("usage: ") for line in lines[:-1]), err
    prog = f"python -m rja_models.{module.__name__.rsplit('.', 1)[-1]}"
    assert lines[-1].startswith(f"{prog}: error: "), err
    return lines[-1]


# A case: (argv, a fragment the message must hold); "{name}" stands for the path `files[name]`.
Case = tuple[tuple[str, ...], str]

TINY = ["--quiet", "--no-tensorboard"]

CONFIG_FILES = {  # files key -> (file name, content), each a bad --config
    "corrupt_yaml": ("corrupt.yaml", "epochs: [1\n"),
    "corrupt_json": ("corrupt.json", '{"epochs": }'),
    "binary_config": ("binary.yaml", b"\x80\x02\xff\x00"),
    "wrong_type": ("wrong-type.yaml", "batch-size: abc\n"),
    "not_a_mapping": ("list.yaml", "- 1\n- 2\n"),
    "unknown_key": ("unknown-key.yaml", "no_such_option: 1\n"),
    "flag_not_bool": ("flag.yaml", "quiet: sometimes\n"),
    "bad_value": ("bad-value.yaml", "num-workers: -1\n"),
}

COMMON: dict[str, Case] = {  # what train, evaluate and ablate share (their runtime and data options)
    "config-missing": (("--config", "{missing}"), "{missing}"),
    "config-folder": (("--config", "{folder}"), "is a folder"),
    **{f"config-{key}": (("--config", f"{{{key}}}"), f"{{{key}}}") for key in CONFIG_FILES},
    "device": (("--device", "gpu"), "--device"),
    "batch-size-0": (("--batch-size", "0"), "--batch-size"),
    "num-workers-negative": (("--num-workers", "-1"), "--num-workers"),
    "synthetic-seconds-negative": (("--synthetic-seconds", "-2"), "--synthetic-seconds"),
    "videos-list-missing": (("--videos", "@{missing}"), "--videos"),
    "videos-list-folder": (("--videos", "@{folder}"), "--videos"),
    "data-root-missing": (("--data", "features", "--data-root", "{missing}"), "--data-root"),
    "data-root-file": (("--data", "affwild2", "--data-root", "{text}"), "--data-root"),
    "data-root-absent": (("--data", "affwild2"), "--data-root"),
}

TRAIN: dict[str, Case] = {
    **COMMON,
    "epochs-0": (("--epochs", "0"), "--epochs"),
    "epochs-negative": (("--epochs", "-3"), "--epochs"),
    "lr-negative-print-config": (("--lr", "-1", "--print-config"), "--lr"),
    "target-low-not-below-high": (("--target-low", "1", "--target-high", "0.5", "--print-config"), "--target-low"),
    "model-size-0": (("--clips", "0", "--print-config"), "--clips"),
    "out-is-a-file": (("--out", "{text}"), "--out"),
    "weights-missing": (("--audio-backbone-weights", "{missing}"), "--audio-backbone-weights"),
    "weights-folder": (("--visual-backbone-weights", "{folder}"), "--visual-backbone-weights"),
    "weights-wrong-kind": (("--audio-backbone-weights", "{text}"), "--audio-backbone-weights"),
    "weights-code": (("--visual-backbone-weights", "{code}"), "code objects"),
    "weights-truncated": (("--visual-backbone-weights", "{truncated}"), "truncated"),
    "features-layout": (("--data", "features", "--data-root", "{empty_dir}"), "{empty_dir}"),
    "affwild2-layout": (("--data", "affwild2", "--data-root", "{empty_dir}"), "{empty_dir}"),
    "resume-without-run": (("--data", "features", "--data-root", "{features}", "--resume", "--out", "{no_run}"),
                           "--resume"),
}
if not torch.cuda.is_available() and "cuda" not in available_backends("cpu"):  # (not under the CUDA emulator)
    TRAIN["backend-cuda-without-cuda"] = (("--data", "features", "--data-root", "{empty_dir}", "--backend", "cuda"),
                                          "--backend cuda")


def resolve(case: Case, files: Files) -> tuple[list[str], str]:
    paths = {k: str(v) for k, v in files.items()}
    argv, fragment = case
    return [a.format(**paths) for a in argv], fragment.format(**paths)


@pytest.mark.parametrize("case", TRAIN, ids=str)
def test_train_bad_input(case, files, tmp_path, capsys):
    argv, fragment = resolve(TRAIN[case], files)
    line = fails_with_one_line(train, [*TINY, "--out", str(tmp_path / "run"), *argv], capsys)
    assert fragment in line


@pytest.mark.parametrize("kind", [*BAD_CHECKPOINTS, "folder", "slim best.pt"], ids=str)
def test_train_resume_bad_checkpoint(kind, files, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    if kind == "folder":
        (out / "last.pt").mkdir()
    else:
        shutil.copy(files["best"] if kind == "slim best.pt" else files[kind], out / "last.pt")
    line = fails_with_one_line(train, feature_args(files["features"], out, "--epochs", "1", "--resume"), capsys)
    expected = {"folder": "is a folder", "slim best.pt": "cannot be resumed"}.get(kind) or BAD_CHECKPOINTS[kind]
    assert str(out / "last.pt") in line and expected in line


EVALUATE: dict[str, Case] = {
    "checkpoint-missing": (("--checkpoint", "{missing}"), "--checkpoint"),
    "checkpoint-folder": (("--checkpoint", "{folder}"), "--checkpoint"),
    **{f"checkpoint-{k}": (("--checkpoint", f"{{{k}}}"), f"{{{k}}}") for k in BAD_CHECKPOINTS},
    # With a good checkpoint (trained on features); without --data-root it reads the checkpoint's.
    **{k: (("--checkpoint", "{best}", *argv), fragment) for k, (argv, fragment) in COMMON.items()
       if k != "data-root-absent"},
    "split": (("--checkpoint", "{best}", "--split", "test"), "--split"),
    "json-is-a-folder": (("--checkpoint", "{best}", "--json", "{folder}"), "--json"),
    "csv-in-a-file": (("--checkpoint", "{best}", "--csv", "{text}/x.csv"), "--csv"),
    "features-checkpoint-on-clips": (("--checkpoint", "{best}", "--data", "synthetic"), "--data features"),
    "features-layout": (("--checkpoint", "{best}", "--data-root", "{empty_dir}"), "{empty_dir}"),
}


@pytest.mark.parametrize("case", EVALUATE, ids=str)
def test_evaluate_bad_input(case, files, capsys):
    argv, fragment = resolve(EVALUATE[case], files)
    assert fragment in fails_with_one_line(evaluate, ["--quiet", *argv], capsys)


PREDICT: dict[str, Case] = {
    "video-missing": (("{missing}", "--checkpoint", "{best}"), "{missing}"),
    "video-folder": (("{folder}", "--checkpoint", "{best}"), "is a folder"),
    "checkpoint-missing": (("{video}", "--checkpoint", "{missing}"), "--checkpoint"),
    "checkpoint-folder": (("{video}", "--checkpoint", "{folder}"), "--checkpoint"),
    **{f"checkpoint-{k}": (("{video}", "--checkpoint", f"{{{k}}}"), f"{{{k}}}") for k in BAD_CHECKPOINTS},
    "features-checkpoint": (("{video}", "--checkpoint", "{best}"), "--checkpoint"),
    "out-is-a-file": (("{video}", "--checkpoint", "{best}", "--out", "{text}"), "--out"),
    "batch-size-0": (("{video}", "--checkpoint", "{best}", "--batch-size", "0"), "--batch-size"),
    "device": (("{video}", "--checkpoint", "{best}", "--device", "gpu"), "--device"),
}


@pytest.mark.parametrize("case", PREDICT, ids=str)
def test_predict_bad_input(case, files, capsys):
    argv, fragment = resolve(PREDICT[case], files)
    assert fragment in fails_with_one_line(predict, ["--quiet", "--out", str(files["base"] / "p"), *argv], capsys)


def test_predict_video_errors_need_a_model_with_backbones(files, tmp_path, capsys):
    """Not a video, and a video without audio (with the CLI's hint, not the Python API's)."""
    config = ModelConfig(clips=2, clip_frames=4, image_size=32, lstm_hidden=16, head_hidden=16, pooling_hidden=16,
                         n_mels=32)
    checkpoint = tmp_path / "backbones.pt"
    save_checkpoint(checkpoint, RJAModel(config))
    argv = ["--checkpoint", str(checkpoint), "--out", str(tmp_path), "--quiet"]
    assert str(files["text"]) in fails_with_one_line(predict, [str(files["text"]), *argv], capsys)
    line = fails_with_one_line(predict, [str(files["silent"]), *argv], capsys)
    assert "no audio stream" in line and "--visual-only" in line and "visual_only=True" not in line


ABLATE: dict[str, Case] = {
    **COMMON,
    "backbone-checkpoint-missing": (("--backbone-checkpoint", "{missing}"), "--backbone-checkpoint"),
    **{f"backbone-checkpoint-{k}": (("--backbone-checkpoint", f"{{{k}}}"), f"{{{k}}}") for k in BAD_CHECKPOINTS},
    "backbone-checkpoint-without-backbones": (("--backbone-checkpoint", "{best}"), "--backbone-checkpoint"),
    "variants": (("--variants", "blstms_t2,nope"), "--variants"),
    "features-dir-is-a-file": (("--features-dir", "{text}"), "--features-dir"),
    "table-is-a-folder": (("--table", "{folder}"), "--table"),
    "epochs-0": (("--epochs", "0"), "--epochs"),
    "lr-negative-print-config": (("--lr", "-1", "--print-config"), "--lr"),
}


@pytest.mark.parametrize("case", ABLATE, ids=str)
def test_ablate_bad_input(case, files, tmp_path, capsys):
    argv, fragment = resolve(ABLATE[case], files)
    assert fragment in fails_with_one_line(ablate, [*TINY, "--out", str(tmp_path), *argv], capsys)


@pytest.mark.parametrize("command", ["train", "predict"])
def test_no_traceback_end_to_end(command, files):
    """The real entry point (`python -m`): one line, exit code 2; the code in a checkpoint never runs."""
    args = {"train": ["--config", str(files["corrupt_yaml"])],
            "predict": [str(files["video"]), "--checkpoint", str(files["code"])]}[command]
    done = subprocess.run([sys.executable, "-m", f"rja_models.{command}", *args], capture_output=True, text=True,
                          timeout=300, cwd=files["base"])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "CODE-WAS-RUN" not in done.stdout
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"python -m rja_models.{command}: error: ")


def test_argparse_usage_is_one_line(capsys):
    """argparse's own errors stay argparse's, with a short usage line (the options belong to --help)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--no-such-option"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "usage: python -m rja_models.train [options]",
        "python -m rja_models.train: error: unrecognized arguments: --no-such-option"]
