"""CPU inference time per window: ONNX Runtime against PyTorch, same model, same process.

    python benchmarks/onnx_vs_torch.py                      # default ModelConfig, batch 1 window
    python benchmarks/onnx_vs_torch.py --threads 4 --repeats 20 --json onnx_vs_torch.json

A window is one sub-sequence: L=8 clips of F=8 frames at 112x112 plus each clip's audio (raw 16 kHz
waveform, one clip at 30 fps), everything from the log-mel front end to the heads. The model is
randomly initialised (timing does not depend on the weights) and exported once with
`rja_models.export` (ONNX, dynamic batch, the fused operator translated into standard ONNX). Each
runtime runs `--warmup` windows, then `--repeats` timed windows; the median and the spread are
printed (the runtimes interleaved, round by round, against a shared machine's changing
load), with the max-norm relative error of ONNX Runtime's outputs against PyTorch's.

PyTorch runs eager under `torch.inference_mode()` with the fused operator's "auto" backend (and,
with --torch-export, the `torch.export` program too). Both runtimes use `--threads` intra-op
threads (default: torch's current count) and one inter-op thread. Needs the `export` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rja_models.config import ModelConfig
from rja_models.export import (
    default_audio_samples,
    example_inputs,
    export_module,
    export_onnx,
    export_torch,
    max_error,
    output_names,
    require_export_extra,
)
from rja_models.model import RJAModel


def _time(runners: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each runner, the runners interleaved round by round, so that a change in
    the machine's load (a shared machine) falls on all of them alike."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("model", "fusion"), default="model")
    parser.add_argument("--batch", type=int, default=1, help="windows per call (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--torch-export", action="store_true", help="also time the torch.export program")
    parser.add_argument("--keep", type=Path, default=None, help="write the ONNX file here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    require_export_extra(need_runtime=True)
    import onnxruntime

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = ModelConfig()
    model = RJAModel(config).eval()
    module = export_module(model, args.part)
    samples = default_audio_samples(config)
    inputs = example_inputs(model, args.part, args.batch, samples, config.image_size, seed=1)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_onnx(module, example_inputs(model, args.part, 2, samples, config.image_size), output_names(args.part),
                    path)
        export_s = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {k: v.numpy() for k, v in inputs.items()}

        def torch_eager() -> object:
            with torch.inference_mode():
                return module(**inputs)

        runners: dict[str, Callable[[], object]] = {"torch_eager": torch_eager,
                                                     "onnxruntime": lambda: session.run(None, feeds)}
        if args.torch_export:
            program = export_torch(module, example_inputs(model, args.part, 2, samples, config.image_size)).module()

            def torch_export() -> object:
                with torch.no_grad():
                    return program(**inputs)

            runners["torch_export"] = torch_export
        results = {name: _summary(t) for name, t in _time(runners, args.warmup, args.repeats).items()}
        with torch.no_grad():
            want = module(**inputs)
        want = list(want.values()) if isinstance(want, dict) else list(want)
        error = max_error([torch.from_numpy(a) for a in session.run(None, feeds)], want)
        size_mb = path.stat().st_size / 2**20

    report = {
        "part": args.part, "batch": args.batch, "threads": args.threads,
        "inputs": {k: list(v.shape) for k, v in inputs.items()},
        "torch_version": torch.__version__, "onnxruntime_version": onnxruntime.__version__,
        "export_s": round(export_s, 1), "onnx_mb": round(size_mb, 1), "max_rel_error": error, **results,
    }
    ratio = results["torch_eager"]["median_ms"] / results["onnxruntime"]["median_ms"]
    print(f"{args.part}, batch {args.batch}, {args.threads} threads, inputs "
          + ", ".join(f"{k} {v}" for k, v in report["inputs"].items()), file=sys.stderr)
    for name, r in results.items():
        print(f"  {name:12s} median {r['median_ms']:9.1f} ms  (min {r['min_ms']:.1f}, max {r['max_ms']:.1f})",
              file=sys.stderr)
    print(f"  torch eager / onnxruntime = {ratio:.2f}; max-norm relative error {error:.1e}; "
          f"export {export_s:.0f} s, {size_mb:.0f} MB", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
