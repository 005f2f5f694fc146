"""Export a checkpoint's model, or its fusion block alone, as a torch.export program or an ONNX file.

    python -m rja_models.export --checkpoint runs/train/best.pt --format onnx --out model.onnx
    python -m rja_models.export --checkpoint runs/train/best.pt --format torch --out model.pt2
    python -m rja_models.export --checkpoint C --format onnx --part fusion --out fusion.onnx

--format torch: a `torch.export` program (`.pt2`, `torch.export.load`), the fused operator kept as one
`rja::...` node; loading it needs `import rja_kernels` first (it registers the op). --format onnx: a
standard ONNX file (opset 20) in which the operator is translated into plain ONNX ops
(`rja_kernels.onnx`); any ONNX runtime runs it, no rja code needed. ONNX needs the `export` extra:
`pip install 'rja[export]'`.

Inputs, batch dimension B dynamic in both formats (every other size fixed at export):
  --part model, with backbones: frames [B, L, 3, F, H, W] in [0, 1], audio [B, L, S] (raw waveform);
      without backbones: xa [B, L, da], xv [B, L, dv]; a single-modality model takes its modality only.
      Outputs: clip [B, L, n_targets], frame [B, L*F, n_targets].
  --part fusion: xa [B, L, da], xv [B, L, dv] -> xa_out, xv_out (the attention block of fusion rja,
      jca or released).
After writing, the file is reloaded (torch) or run in onnxruntime (onnx) at batch sizes other than
the example's and compared with the eager model (skip with --no-verify).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rja_models.checkpoint import model_from_checkpoint
from rja_models.cli import UsageError, command_parser, run_command
from rja_models.config import ModelConfig
from rja_models.data import clip_audio_samples
from rja_models.model import RJAModel
from rja_models.training.distributed import resolve_device
from rja_models.training.logs import say
from rja_models.training.options import POSITIVE_INT, check_backend, device_name, input_file, output_file, parse_args

__all__ = [
    "FORMATS",
    "PARTS",
    "TOLERANCE",
    "ExportReport",
    "ExportVerificationError",
    "default_audio_samples",
    "example_inputs",
    "export",
    "export_module",
    "export_onnx",
    "export_torch",
    "max_error",
    "rja_op_nodes",
    "verify",
]

PROG = "python -m rja_models.export"
FORMATS = ("torch", "onnx")
PARTS = ("model", "fusion")
BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
SUFFIXES = {".pt2": "torch", ".onnx": "onnx"}
EXTRA_INSTALL = "pip install 'rja[export]'"
# float32 agreement of an exported file with the eager model, max-norm relative:
# max|exported - eager| <= TOLERANCE * max(1, max|eager|). See `max_error`.
TOLERANCE = 1e-4
# Frame rate for the default audio length per clip when the checkpoint does not record it.
DEFAULT_FPS = 30.0
# Warnings of torch's exporters about their own internals, not about the model; hidden.
_EXPORTER_NOISE = (
    r".*were assigned during export.*",  # nn.LSTM's cached _flat_weights
    r".*_check_is_size will be removed.*",
    r".*The axis name: .* will not be used.*",  # every input's batch is one Dim
    r".*No complete tensor found in the group.*",
    r".*Converting a tensor with requires_grad=True to a scalar.*",
)


class ExportVerificationError(RuntimeError):
    """The exported file disagrees with the eager model beyond `TOLERANCE`."""


@dataclass(frozen=True)
class ExportReport:
    """What `export` wrote and, when verified, how well the file matched the eager model."""

    path: Path
    format: str
    part: str
    inputs: dict[str, list[int | str]]  # input name -> shape, "B" for the dynamic batch
    op_nodes: dict[str, int]  # rja::<op> -> node count (torch format) or {} (onnx: none remain)
    errors: dict[int, float] | None  # verified batch size -> max-norm relative error


def export_module(model: RJAModel, part: str = "model") -> nn.Module:
    """The module to export: the model itself, or its fusion block (`UsageError` if it has none)."""
    if part == "model":
        return model
    if part == "fusion":
        if model.fusion is None:
            raise UsageError(f"--part fusion: the model has fusion={model.config.fusion!r}, which has no "
                             "attention block (fusion rja, jca or released have one)")
        return model.fusion
    raise UsageError(f"--part must be one of {PARTS}, got {part!r}")


def default_audio_samples(config: ModelConfig, ckpt: dict[str, Any] | None = None) -> int:
    """Audio samples per clip: what training recorded in the checkpoint, else one clip at 30 fps."""
    extra = (ckpt or {}).get("extra")
    data = extra.get("data") if isinstance(extra, dict) else None
    recorded = data.get("audio_samples") if isinstance(data, dict) else None
    if isinstance(recorded, int) and recorded > 0:
        return recorded
    return clip_audio_samples(config.clip_frames, DEFAULT_FPS, config.sample_rate)


def example_inputs(model: RJAModel, part: str, batch: int, audio_samples: int, image_size: int,
                   seed: int = 0) -> dict[str, Tensor]:
    """Random inputs of the exported module by argument name (see the module docstring for shapes)."""
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    features = part == "fusion" or not c.use_backbones
    out: dict[str, Tensor] = {}
    if features:
        dims = {"xa": c.da, "xv": c.dv} if part == "fusion" else {
            {"audio": "xa", "visual": "xv"}[name]: dim for name, dim in model.dims.items()}
        for name, dim in dims.items():
            out[name] = torch.randn(batch, c.clips, dim, generator=gen)
        return out
    if c.uses_visual:
        out["frames"] = torch.rand(batch, c.clips, 3, c.clip_frames, image_size, image_size, generator=gen)
    if c.uses_audio:
        out["audio"] = 0.1 * torch.randn(batch, c.clips, audio_samples, generator=gen)
    return out


def output_names(part: str) -> list[str]:
    return ["clip", "frame"] if part == "model" else ["xa_out", "xv_out"]


def _leaves(outputs: Any) -> list[Tensor]:
    """The module's outputs in the order an exported file lists them (dict values in order, tuples)."""
    if isinstance(outputs, dict):
        return list(outputs.values())
    if isinstance(outputs, (tuple, list)):
        return list(outputs)
    return [outputs]


def _dynamic_batch(inputs: dict[str, Tensor]) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1)
    return {name: {0: batch} for name in inputs}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _EXPORTER_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def _on(inputs: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


def export_torch(module: nn.Module, inputs: dict[str, Tensor]) -> torch.export.ExportedProgram:
    """`torch.export` of `module(**inputs)` with a dynamic batch (dim 0 of every input). The fused
    operators stay single `rja::` nodes (their fake kernels give the output shapes)."""
    if next(iter(inputs.values())).shape[0] < 2:
        raise ValueError("the example batch must be >= 2: torch.export specialises a size-1 dim to 1")
    with _quiet_exporter(), torch.no_grad():
        return torch.export.export(module, (), kwargs=inputs, dynamic_shapes=_dynamic_batch(inputs))


def rja_op_nodes(program: torch.export.ExportedProgram) -> dict[str, int]:
    """`rja::<op>` -> number of nodes of it in the program's graph."""
    counts: dict[str, int] = {}
    for node in program.graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) and target.namespace == "rja":
            name = f"rja::{target._opname}"
            counts[name] = counts.get(name, 0) + 1
    return counts


def require_export_extra(need_runtime: bool = False) -> None:
    """`UsageError` with the install command unless the `export` extra's packages import."""
    names = ("onnx", "onnxscript", *(("onnxruntime",) if need_runtime else ()))
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UsageError(f"ONNX export needs the 'export' extra, which is not installed here ({e}): "
                             f"{EXTRA_INSTALL}") from None


def export_onnx(module: nn.Module, inputs: dict[str, Tensor], names: Sequence[str], path: Path | str) -> Path:
    """`torch.onnx.export(dynamo=True)` of `module(**inputs)` to `path`, dynamic batch, both fused
    operators translated into standard ONNX (`rja_kernels.onnx`). Runs on the CPU."""
    require_export_extra()
    from rja_kernels.onnx import OPSET, custom_translation_table

    path = Path(path)
    inputs = _on(inputs, torch.device("cpu"))
    module = module.cpu()
    # The ONNX graph has its own implementation of the operator: any backend that runs on the CPU
    # traces it (a checkpoint trained with backend="cuda" exports on a machine without a GPU).
    fused = [m for m in module.modules() if hasattr(m, "backend") and isinstance(m.backend, str)]
    saved = [m.backend for m in fused]
    try:
        for m in fused:
            m.backend = "reference"
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module, (), kwargs=inputs, dynamic_shapes=_dynamic_batch(inputs), input_names=list(inputs),
                output_names=list(names), opset_version=OPSET, dynamo=True, verbose=False,
                custom_translation_table=custom_translation_table())
    finally:
        for m, b in zip(fused, saved):
            m.backend = b
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter():
        program.save(str(path))
    return path


def max_error(got: Sequence[Tensor], want: Sequence[Tensor]) -> float:
    """Max-norm relative error over all outputs: `max|got - want| / max(1, max|want|)`, per output,
    the largest. Not elementwise: a value near zero that cancels large terms keeps the absolute
    rounding of those terms, so its relative error means nothing."""
    worst = 0.0
    for g, w in zip(got, want):
        g, w = torch.as_tensor(g).double(), w.detach().double().cpu()
        if g.shape != w.shape:
            raise ExportVerificationError(f"an output has shape {list(g.shape)}, the eager model's {list(w.shape)}")
        scale = max(1.0, w.abs().max().item()) if w.numel() else 1.0
        err = (g - w).abs().max().item() / scale if w.numel() else 0.0
        worst = max(worst, err if math.isfinite(err) else math.inf)
    return worst


def verify(path: Path, fmt: str, module: nn.Module, inputs_for: Any, batches: Sequence[int],
           device: torch.device) -> dict[int, float]:
    """Run the written file at each batch size and compare with `module`: batch -> `max_error`.
    `inputs_for(batch)` builds the inputs. Raises `ExportVerificationError` beyond `TOLERANCE`."""
    if fmt == "torch":
        import rja_kernels  # noqa: F401  (the op must be registered to load the program)

        with _quiet_exporter():
            runner = torch.export.load(str(path)).module()
    else:
        require_export_extra(need_runtime=True)
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        device = torch.device("cpu")
        module = module.cpu()
    errors = {}
    for batch in batches:
        inputs = _on(inputs_for(batch), device)
        with torch.no_grad():
            want = _leaves(module(**inputs))
            if fmt == "torch":
                with _quiet_exporter():
                    got = [t.cpu() for t in _leaves(runner(**inputs))]
            else:
                got = [torch.from_numpy(a) for a in session.run(None, {k: v.numpy() for k, v in inputs.items()})]
        if len(got) != len(want):
            raise ExportVerificationError(f"{path}: {len(got)} outputs, the eager model has {len(want)}")
        errors[batch] = max_error(got, want)
        if not errors[batch] <= TOLERANCE:
            raise ExportVerificationError(
                f"{path}: at batch {batch} the exported {fmt} file differs from the eager model by "
                f"{errors[batch]:.3g} (max-norm relative), over the tolerance {TOLERANCE:g}")
    return errors


def export(model: RJAModel, path: Path | str, fmt: str, part: str = "model", *, batch: int = 2,
           audio_samples: int | None = None, image_size: int | None = None,
           device: torch.device | str = "cpu", check: bool = True) -> ExportReport:
    """Export `model` (in eval mode) or its fusion block to `path` in `fmt` ("torch" or "onnx"), then,
    with `check`, verify the file at batch sizes 1 and `batch + 1`; see the module docstring."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if batch < 2:
        raise UsageError(f"--example-batch must be >= 2 (torch.export fixes a size-1 batch), got {batch}")
    device = torch.device(device)
    if fmt == "onnx" and device.type != "cpu":
        raise UsageError(f"--device {device}: ONNX export runs on the CPU (--device is for --format torch)")
    path = Path(path)
    model = model.eval()
    module = export_module(model, part).to(device)
    c = model.config
    samples = audio_samples or default_audio_samples(c)
    size = image_size or c.image_size

    def inputs_for(b: int) -> dict[str, Tensor]:
        return _on(example_inputs(model, part, b, samples, size, seed=b), device)

    inputs = inputs_for(batch)
    op_nodes: dict[str, int] = {}
    if fmt == "torch":
        program = export_torch(module, inputs)
        op_nodes = rja_op_nodes(program)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _quiet_exporter():
            torch.export.save(program, str(path))
    else:
        export_onnx(module, inputs, output_names(part), path)
    errors = verify(path, fmt, module, inputs_for, (1, batch + 1), device) if check else None
    shapes = {name: ["B", *t.shape[1:]] for name, t in inputs.items()}
    return ExportReport(path, fmt, part, shapes, op_nodes, errors)


# ---- the command -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, __doc__, usage="%(prog)s --checkpoint CKPT --out FILE [--format torch|onnx] "
                                                 "[options]")
    parser.add_argument("--checkpoint", type=input_file, required=True, metavar="CKPT",
                        help="a checkpoint of rja_models.train")
    parser.add_argument("--out", type=output_file, required=True, metavar="FILE",
                        help="the file to write (.pt2 or .onnx)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="torch (torch.export program) or onnx (default: from --out's suffix, .pt2 or .onnx)")
    parser.add_argument("--part", choices=PARTS, default="model",
                        help="model: the whole model; fusion: its attention block alone (default: %(default)s)")
    parser.add_argument("--example-batch", type=POSITIVE_INT, default=2, metavar="N",
                        help="batch of the example inputs traced, >= 2; the exported batch is dynamic "
                             "(default: %(default)s)")
    parser.add_argument("--audio-samples", type=POSITIVE_INT, default=None, metavar="S",
                        help="audio samples per clip S, fixed in the file (default: as the checkpoint was trained, "
                             f"else one clip at {DEFAULT_FPS:g} fps)")
    parser.add_argument("--image-size", type=POSITIVE_INT, default=None, metavar="H",
                        help="frame height and width H = W, fixed in the file (default: the checkpoint's image size)")
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="--format torch: the device the program is exported for (default: %(default)s)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="--format torch: the fused operator's backend recorded in the program (default: "
                             "the checkpoint's; auto picks the best for --device at export)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip running the written file against the eager model")
    parser.add_argument("--quiet", action="store_true", help="no messages")
    return parser


def run(args: argparse.Namespace) -> ExportReport:
    """Export as the options say and print one line about the result; returns the report."""
    fmt = args.format or SUFFIXES.get(args.out.suffix.lower())
    if fmt is None:
        raise UsageError(f"--out {args.out}: cannot tell the format from its suffix; pass --format torch or onnx "
                         "(or name the file .pt2 or .onnx)")
    if fmt == "onnx":
        require_export_extra(need_runtime=not args.no_verify)
        if args.device != "cpu":
            raise UsageError(f"--device {args.device}: ONNX export runs on the CPU (--device is for --format torch)")
        if args.backend is not None:
            raise UsageError("--backend is for --format torch: the ONNX file holds its own implementation")
    device = resolve_device(args.device)
    model, config, ckpt = model_from_checkpoint(args.checkpoint)
    if args.backend is not None and model.fusion is not None and hasattr(model.fusion, "backend"):
        model.fusion.backend = args.backend
        config = config.replace(backend=args.backend)
    if fmt == "torch":
        check_backend(config, device, source="--backend" if args.backend else f"--checkpoint {args.checkpoint}: "
                                                                               "its backend")
    export_module(model, args.part)  # a bad --part fails before any tracing
    report = export(model, args.out, fmt, args.part, batch=args.example_batch,
                    audio_samples=args.audio_samples or default_audio_samples(config, ckpt),
                    image_size=args.image_size, device=device, check=not args.no_verify)
    shapes = ", ".join(f"{name} [{', '.join(map(str, s))}]" for name, s in report.inputs.items())
    ops = "; kept " + ", ".join(f"{n} as {k} node{'s' * (k != 1)}" for n, k in report.op_nodes.items()) \
        if report.op_nodes else ""
    checked = "" if report.errors is None else (
        f"; {'reloaded' if fmt == 'torch' else 'onnxruntime'} matches eager at batch "
        + ", ".join(f"{b} ({e:.1e})" for b, e in report.errors.items()) + f", tolerance {TOLERANCE:g}")
    say(f"wrote {report.path} ({fmt}, {args.part}; inputs {shapes}, B dynamic{ops}{checked})", args.quiet)
    return report


def main(argv: Sequence[str] | None = None) -> ExportReport:
    """The command: `run` on `argv`; a bad input is one line on stderr and exit code 2, a written
    file that does not match the eager model one line and exit code 1."""
    try:
        return run_command(PROG, lambda: run(parse_args(build_parser(), argv)))
    except ExportVerificationError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

