"""Command-line options shared by the CLIs, and config files (YAML or JSON) under them.

Precedence, lowest first: the parser's defaults, the config file (`--config FILE`), the command
line. A config file is a flat mapping whose keys are the long option names (`image-size` or
`image_size`); unknown keys are an error, so a typo never goes silently unused.

Model options are generated from the fields of `ModelConfig`, so every model switch is an option.
They default to "unset" (None): the model config is `ModelConfig(**preset)`, then the `--ablation`
overrides, then every model option that the config file or the command line set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rja_models.config import ABLATIONS, FUSIONS, POOLINGS, ModelConfig, TargetConfig

DATA_SOURCES = ("synthetic", "affwild2", "features")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "none")
LOSSES = ("ccc", "mse")
BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")

# Option dest -> ModelConfig field, for every field but `targets` (three options below).
_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig) if f.name != "targets"}
_MODEL_CHOICES = {"fusion": FUSIONS, "visual_pooling": POOLINGS, "backend": BACKENDS}
_TARGET_OPTIONS = {"target_names": "names", "target_low": "low", "target_high": "high"}


def default_cache_dir() -> Path:
    """Where generated data is cached: `$RJA_CACHE`, else `$XDG_CACHE_HOME/rja`, else `~/.cache/rja`."""
    if os.environ.get("RJA_CACHE"):
        return Path(os.environ["RJA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rja"


def add_data_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=DATA_SOURCES, default="synthetic",
                   help="synthetic: generate (once, cached) the synthetic A-V set; affwild2: an Aff-Wild2-layout "
                        "tree at --data-root; features: precomputed features at --data-root/{train,val} "
                        "(default: %(default)s)")
    g.add_argument("--data-root", type=Path, default=None,
                   help="the data's directory (synthetic: where it is generated, default "
                        f"{default_cache_dir()}/synthetic-v1/<parameters>)")
    g.add_argument("--videos", default=None,
                   help="use only these videos: comma-separated names, or @FILE with one name per line "
                        "(names absent from a split are ignored there)")
    g.add_argument("--synthetic-videos", type=int, default=24, help="synthetic: video files (default: %(default)s)")
    g.add_argument("--synthetic-seconds", type=float, default=6.0,
                   help="synthetic: seconds per video (default: %(default)s)")
    g.add_argument("--synthetic-seed", type=int, default=0, help="synthetic: generator seed (default: %(default)s)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)")


def add_model_options(parser: argparse.ArgumentParser, preset: Mapping[str, Any]) -> None:
    """One option per `ModelConfig` field; `preset` are the defaults this command builds on."""
    base = ModelConfig(**preset)
    g = parser.add_argument_group("model (every ModelConfig field; see rja_models.config)")
    g.add_argument("--ablation", choices=sorted(ABLATIONS), default=None,
                   help="start from this variant of the paper's Table 1 / baselines; other model options override it")
    for name, f in _MODEL_FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = getattr(base, name)
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        help_text = f"(default: {default})"
        if kind == "bool":
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            convert = {"int": int, "float": float}.get(kind, str)
            g.add_argument(flag, type=convert, choices=_MODEL_CHOICES.get(name), default=None, help=help_text)
    g.add_argument("--target-names", type=_names, default=None,
                   help=f"comma-separated regression targets (default: {','.join(base.targets.names)})")
    g.add_argument("--target-low", type=float, default=None, help=f"(default: {base.targets.low})")
    g.add_argument("--target-high", type=float, default=None, help=f"(default: {base.targets.high})")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("runtime")
    g.add_argument("--config", type=Path, default=None,
                   help="YAML or JSON file of option values (keys: long option names); the command line overrides it")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (default: auto)")
    g.add_argument("--batch-size", type=int, default=4,
                   help="global batch of sub-sequences, split evenly over the processes (default: %(default)s)")
    g.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch printing")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=3, help="(default: %(default)s)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="(default: %(default)s)")
    g.add_argument("--momentum", type=float, default=0.9, help="sgd momentum (default: %(default)s)")
    g.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="learning-rate schedule, stepped every batch (default: %(default)s)")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear warm-up before the schedule (default: %(default)s)")
    g.add_argument("--step-epochs", type=float, default=10.0,
                   help="step schedule: epochs between decays (default: %(default)s)")
    g.add_argument("--step-gamma", type=float, default=0.1, help="step schedule: decay factor (default: %(default)s)")
    g.add_argument("--grad-clip", type=float, default=5.0, help="max gradient norm, 0 for none (default: %(default)s)")
    g.add_argument("--loss", choices=LOSSES, default="ccc",
                   help="ccc: mean over targets of 1 - CCC over the global batch; mse (default: %(default)s)")
    g.add_argument("--train-stride", type=int, default=None,
                   help="frames between training sub-sequence starts (default: clips * clip_frames / 2, "
                        "half-overlapping; validation never overlaps)")
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--out", type=Path, default=Path("runs/train"), help="output directory (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    g.add_argument("--overwrite", action="store_true", help="start over even if --out holds a run")
    g.add_argument("--stop-after", type=int, default=None,
                   help="end this process after this many epochs in total, as if killed; --resume goes on "
                        "(for preemptible jobs, and to test resuming)")
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (ignored, with a warning, on CPU)")
    g.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default="bfloat16", help="(default: %(default)s)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                   help="deterministic algorithms, so a run repeats bit for bit (default: on)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="also log to TensorBoard when torch.utils.tensorboard imports (default: on)")
    g.add_argument("--plot-videos", type=int, default=3,
                   help="validation videos in the predicted-vs-true plot (default: %(default)s)")
    g.add_argument("--print-config", action="store_true", help="print the resolved options as JSON and exit")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv` over the values of the `--config` file it names (if any)."""
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None) is not None:
        parser.set_defaults(**load_config_file(pre.config, parser))
    return parser.parse_args(argv)


def load_config_file(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's values by option dest, converted and checked like command-line values."""
    text = path.read_text()
    values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if values is None:
        return {}
    if not isinstance(values, dict):
        parser.error(f"{path}: a config file must be a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            parser.error(f"{path}: unknown option {key!r}")
        action = actions[dest]
        if value is not None and action.type is not None and not (dest == "target_names" and isinstance(value, list)):
            value = action.type(value if action.type in (Path, str, _names) else str(value))
        if action.choices is not None and value is not None and value not in action.choices:
            parser.error(f"{path}: {key}={value!r} is not one of {sorted(action.choices)}")
        out[dest] = tuple(value) if dest == "target_names" and isinstance(value, list) else value
    return out


def model_config(args: argparse.Namespace, preset: Mapping[str, Any]) -> ModelConfig:
    """`ModelConfig(**preset)`, then the `--ablation` overrides, then the model options that were set."""
    config = ModelConfig(**preset)
    if args.ablation is not None:
        config = ModelConfig.ablation(args.ablation, base=config)
    overrides = {name: getattr(args, name) for name in _MODEL_FIELDS if getattr(args, name) is not None}
    targets = {field: getattr(args, dest) for dest, field in _TARGET_OPTIONS.items() if getattr(args, dest) is not None}
    if targets:
        overrides["targets"] = TargetConfig(**{**dataclasses.asdict(config.targets), **targets})
    try:
        return config.replace(**overrides)
    except ValueError as e:  # the config's own validation, reported as a usage error
        raise SystemExit(f"error: invalid model options: {e}") from e


def video_names(spec: str | None) -> list[str] | None:
    """`--videos`: None, `a,b,c`, or `@FILE` (one name per line, `#` comments)."""
    if spec is None:
        return None
    if spec.startswith("@"):
        lines = Path(spec[1:]).read_text().splitlines()
        return [s for line in lines if (s := line.split("#")[0].strip())]
    return [s.strip() for s in spec.split(",") if s.strip()]


def options_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The options as JSON-safe values (paths as strings, tuples as lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        return list(v) if isinstance(v, tuple) else v

    return {k: plain(v) for k, v in sorted(vars(args).items())}


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())
