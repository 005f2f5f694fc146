"""Export round trips: torch.export programs (the fused op kept as one node) and ONNX files (the op
translated into standard ONNX, run by onnxruntime), each compared with the eager model at batch
sizes other than the traced example's (dynamic batch); and the `rja_models.export` command.

The ONNX tests need the `export` extra (`pip install '.[export]'`) and skip without it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from rja_models import export as export_cli
from rja_models.checkpoint import save_checkpoint
from rja_models.config import ModelConfig
from rja_models.export import (
    TOLERANCE,
    example_inputs,
    export,
    export_onnx,
    export_torch,
    max_error,
    rja_op_nodes,
    verify,
)
from rja_models.fusion import JointCrossAttention, RecursiveJointAttention, ReleasedJointAttention
from rja_models.model import RJAModel

# Small fusion blocks: L=4 clips, da=16, dv=8 (da != dv catches a swapped modality).
FUSIONS = {
    "rja": lambda: RecursiveJointAttention(4, 16, 8, 2),
    "rja_both_switches": lambda: RecursiveJointAttention(4, 16, 8, 2, h_tanh=True, out_relu=True),
    "rja_shared_t3": lambda: RecursiveJointAttention(4, 16, 8, 3, shared_weights=True, h_tanh=True),
    "jca": lambda: JointCrossAttention(4, 16, 8, 5, 2),
    "jca_shared": lambda: JointCrossAttention(4, 16, 8, 5, 2, shared_weights=True),
    "released": lambda: ReleasedJointAttention(4, 16, 8, 2),
}
OP_OF = {"rja": "rja::recursive_joint_attention", "jca": "rja::joint_cross_attention"}
# The full model with both backbones at tiny sizes: 2 clips of 4 frames at 32x32, small heads.
TINY = {"clips": 2, "clip_frames": 4, "image_size": 32, "lstm_hidden": 16, "head_hidden": 16, "pooling_hidden": 16,
        "n_mels": 32}
EXAMPLE_BATCH = 2
OTHER_BATCHES = (1, 5)  # not the example's: proves the batch is dynamic


def _features(batch: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"xa": torch.randn(batch, 4, 16, generator=gen), "xv": torch.randn(batch, 4, 8, generator=gen)}


def _fusion(name: str) -> torch.nn.Module:
    module = FUSIONS[name]().eval()
    if hasattr(module, "backend"):
        module.backend = "reference"  # available everywhere; the op node and its math are the same
    return module


def _onnx_deps():
    pytest.importorskip("onnxscript", reason="needs the export extra: pip install '.[export]'")
    onnx = pytest.importorskip("onnx", reason="needs the export extra: pip install '.[export]'")
    pytest.importorskip("onnxruntime", reason="needs the export extra: pip install '.[export]'")
    return onnx


def _check_onnx_graph(onnx, path: Path, inputs: dict[str, torch.Tensor]) -> Counter:
    """Valid, standard ONNX only (no rja or other custom domain), batch symbolic on every input."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, ops
    assert {f.domain for f in model.functions} == set()
    graph_inputs = {i.name: i for i in model.graph.input}
    assert set(graph_inputs) == set(inputs)
    for name, tensor in inputs.items():
        dims = graph_inputs[name].type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value, f"{name}: batch is not dynamic"
        assert [d.dim_value for d in dims[1:]] == list(tensor.shape[1:])
    return ops


@pytest.mark.parametrize("name", list(FUSIONS))
def test_fusion_torch_export_round_trip(name, tmp_path):
    module = _fusion(name)
    program = export_torch(module, _features(EXAMPLE_BATCH, 0))
    op = OP_OF.get(name.split("_")[0])
    assert rja_op_nodes(program) == ({op: 1} if op else {})  # the whole recursion is one op node
    path = tmp_path / "fusion.pt2"
    torch.export.save(program, str(path))
    errors = verify(path, "torch", module, lambda b: _features(b, b), OTHER_BATCHES, torch.device("cpu"))
    assert set(errors) == set(OTHER_BATCHES) and max(errors.values()) <= 1e-6


@pytest.mark.parametrize("name", list(FUSIONS))
def test_fusion_onnx_round_trip(name, tmp_path):
    onnx = _onnx_deps()
    module = _fusion(name)
    inputs = _features(EXAMPLE_BATCH, 0)
    path = export_onnx(module, inputs, ["xa_out", "xv_out"], tmp_path / "fusion.onnx")
    ops = _check_onnx_graph(onnx, path, inputs)
    iterations = 3 if "t3" in name else 2
    assert ops["Tanh"] == 2 * iterations * (1 + ("switches" in name or "t3" in name or name == "released"))
    errors = verify(path, "onnx", module, lambda b: _features(b, b), OTHER_BATCHES, torch.device("cpu"))
    assert max(errors.values()) <= TOLERANCE


@pytest.mark.parametrize("fusion", ["rja", "jca"])
def test_onnx_translation_matches_reference_directly(fusion, tmp_path):
    """The translation against the reference math, not just the model: outputs of magnitude well
    above 1, where the max-norm relative error is relative to them."""
    _onnx_deps()
    import onnxruntime

    module = _fusion("rja_both_switches" if fusion == "rja" else "jca")
    inputs = {k: 3 * v for k, v in _features(EXAMPLE_BATCH, 0).items()}
    path = export_onnx(module, inputs, ["xa_out", "xv_out"], tmp_path / "f.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = {k: 3 * v for k, v in _features(7, 1).items()}
    weights = [getattr(module, n) for n in module.weight_names]
    import rja_kernels

    with torch.no_grad():
        if fusion == "rja":
            want = rja_kernels.recursive_joint_attention_reference(*x.values(), *weights, 2, h_tanh=True,
                                                                   out_relu=True)
        else:
            want = rja_kernels.joint_cross_attention_reference(*x.values(), *weights, 2)
    got = [torch.from_numpy(a) for a in session.run(None, {k: v.numpy() for k, v in x.items()})]
    assert max(w.abs().max().item() for w in want) > 2
    assert max_error(got, want) <= TOLERANCE


def test_max_error_is_relative_to_the_largest_output():
    want = [torch.tensor([1000.0, 0.001])]
    assert max_error([torch.tensor([1000.05, 0.0])], want) == pytest.approx(5e-5, rel=1e-3)
    assert max_error([torch.tensor([0.5])], [torch.tensor([0.25])]) == pytest.approx(0.25)


def test_audio_front_end_exports_as_onnx_stft(tmp_path):
    """The log-mel spectrogram (torch.stft inside torchaudio) becomes ONNX STFT, not dropped."""
    onnx = _onnx_deps()
    from rja_models.backbones import AudioEncoder

    encoder = AudioEncoder(16000, 32, 512, 160).eval()
    gen = torch.Generator().manual_seed(0)
    inputs = {"audio": 0.1 * torch.randn(2, 2133, generator=gen)}
    path = export_onnx(encoder, inputs, ["features"], tmp_path / "audio.onnx")
    ops = _check_onnx_graph(onnx, path, inputs)
    assert ops["STFT"] == 1 and ops["Log"] == 1
    errors = verify(path, "onnx", encoder, lambda b: {"audio": 0.1 * torch.randn(b, 2133, generator=gen)},
                    OTHER_BATCHES, torch.device("cpu"))
    assert max(errors.values()) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch", "onnx"])
def test_full_model_round_trip(fmt, tmp_path):
    if fmt == "onnx":
        onnx = _onnx_deps()
    model = RJAModel(ModelConfig(**TINY, h_tanh=True, out_relu=True, backend="reference")).eval()
    with torch.no_grad():  # at init the outputs hardly vary (~0.01): spread them over the tanh's range
        model.head[-1].weight.mul_(100)
    path = tmp_path / f"model.{'pt2' if fmt == 'torch' else 'onnx'}"
    report = export(model, path, fmt, "model", batch=EXAMPLE_BATCH, audio_samples=1500)
    assert report.inputs == {"frames": ["B", 2, 3, 4, 32, 32], "audio": ["B", 2, 1500]}
    assert set(report.errors) == {1, EXAMPLE_BATCH + 1} and max(report.errors.values()) <= TOLERANCE
    if fmt == "torch":
        assert report.op_nodes == {"rja::recursive_joint_attention": 1}
    else:
        ops = _check_onnx_graph(onnx, path, example_inputs(model, "model", 1, 1500, 32))
        assert ops["STFT"] == 1 and ops["LSTM"] == 3 and ops["Conv"] > 20
    # The comparison means something: the outputs depend on the inputs far beyond the tolerance.
    with torch.no_grad():
        clip = model(**example_inputs(model, "model", 3, 1500, 32))["clip"]
    assert (clip[0] - clip[1]).abs().max() > 100 * TOLERANCE


def test_features_model_exports_with_keyword_inputs(tmp_path):
    """A model without backbones takes xa=, xv= (keyword-only); the JCA fusion inside it."""
    model = RJAModel(ModelConfig(use_backbones=False, fusion="jca", clips=4, da=16, dv=8, lstm_hidden=8,
                                 head_hidden=8, backend="reference")).eval()
    report = export(model, tmp_path / "m.pt2", "torch", batch=3)
    assert report.op_nodes == {"rja::joint_cross_attention": 1} and report.inputs["xa"] == ["B", 4, 16]
    assert max(report.errors.values()) <= TOLERANCE
    if _has_onnx():
        report = export(model, tmp_path / "m.onnx", "onnx", batch=3)
        assert max(report.errors.values()) <= TOLERANCE


def test_single_modality_model_takes_its_modality_only(tmp_path):
    model = RJAModel(ModelConfig(use_backbones=False, fusion="audio", clips=3, da=8, dv=8, lstm_hidden=4,
                                 head_hidden=4)).eval()
    report = export(model, tmp_path / "a.pt2", "torch")
    assert report.inputs == {"xa": ["B", 3, 8]} and report.op_nodes == {}
    assert max(report.errors.values()) <= TOLERANCE


def _has_onnx() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


# ---- the command -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("export") / "tiny.pt"
    save_checkpoint(path, RJAModel(ModelConfig(**TINY, fusion="jca")))
    return path


def _fails(argv: list[str], capsys: pytest.CaptureFixture, code: int = 2) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 2 and lines[-1].startswith("python -m rja_models.export: error: "), err
    return lines[-1]


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "python -m rja_models.export --checkpoint" in out and "--quiet" in out and "--part" in out


def test_cli_exports_fusion_as_torch(checkpoint, tmp_path, capsys):
    out = tmp_path / "sub" / "fusion.pt2"
    report = export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--part", "fusion"])
    assert out.is_file() and report.format == "torch" and report.op_nodes == {"rja::joint_cross_attention": 1}
    line = capsys.readouterr().out
    assert "B dynamic" in line and "rja::joint_cross_attention as 1 node" in line
    assert export_cli.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "q.pt2"), "--part", "fusion",
                            "--quiet", "--no-verify"]).errors is None
    assert capsys.readouterr().out == ""


def test_cli_exports_fusion_as_onnx(checkpoint, tmp_path, capsys):
    _onnx_deps()
    out = tmp_path / "fusion.onnx"  # the format from the suffix
    report = export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--part", "fusion", "--quiet"])
    assert out.is_file() and report.format == "onnx" and max(report.errors.values()) <= TOLERANCE


def test_cli_bad_inputs(checkpoint, tmp_path, capsys):
    args = ["--checkpoint", str(checkpoint)]
    assert "--format torch or onnx" in _fails([*args, "--out", str(tmp_path / "m.bin")], capsys)
    assert "no such file" in _fails(["--checkpoint", str(tmp_path / "nope.pt"), "--out", "m.pt2"], capsys)
    assert "invalid choice" in _fails([*args, "--out", str(tmp_path / "m"), "--format", "tflite"], capsys)
    assert ">= 2" in _fails([*args, "--out", str(tmp_path / "m.pt2"), "--example-batch", "1"], capsys)
    concat = tmp_path / "concat.pt"
    save_checkpoint(concat, RJAModel(ModelConfig(use_backbones=False, fusion="concat", clips=2, da=8, dv=8)))
    message = _fails(["--checkpoint", str(concat), "--out", str(tmp_path / "f.pt2"), "--part", "fusion"], capsys)
    assert "fusion='concat'" in message and "no attention block" in message


def test_cli_missing_extra_names_the_install_command(checkpoint, tmp_path, capsys, monkeypatch):
    real_import = export_cli.importlib.import_module

    def no_onnxscript(name: str, *rest):
        if name == "onnxscript":
            raise ModuleNotFoundError("No module named 'onnxscript'")
        return real_import(name, *rest)

    monkeypatch.setattr(export_cli.importlib, "import_module", no_onnxscript)
    message = _fails(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx")], capsys)
    assert "pip install 'rja[export]'" in message and "onnxscript" in message
    assert not (tmp_path / "m.onnx").exists()
