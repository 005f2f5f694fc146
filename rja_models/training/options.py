"""Command-line options shared by the CLIs, and config files (YAML or JSON) under them.

Precedence, lowest first: the parser's defaults, the config file (`--config FILE`), the command
line. A config file is a flat mapping whose keys are the long option names (`image-size` or
`image_size`); unknown keys are an error, so a typo never goes silently unused.

Every value is checked once, where it is parsed: single values by their argparse `type` (which also
converts the config file's values: `--batch-size 0` and `batch-size: 0` fail alike), the checks
across options by `check_options` at the end of `parse_args`. A bad value raises `UsageError` (or is
argparse's own error), which `rja_models.cli.run_command` reports as one line with exit code 2.

Model options are generated from the fields of `ModelConfig`, so every model switch is an option.
They default to "unset" (None): the model config is `ModelConfig(**preset)`, then the `--ablation`
overrides, then every model option that the config file or the command line set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from rja_kernels.backends import why_unavailable
from rja_models.checkpoint import CheckpointError, check_weights_file
from rja_models.cli import UsageError
from rja_models.config import ABLATIONS, FIELD_CHOICES, ModelConfig, TargetConfig

DATA_SOURCES = ("synthetic", "affwild2", "features")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "none")
LOSSES = ("ccc", "ccc_sum", "mse")
BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")

# Option dest -> ModelConfig field, for every field but `targets` (three options below).
_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig) if f.name != "targets"}
_MODEL_CHOICES = {**FIELD_CHOICES, "backend": BACKENDS}  # FIELD_CHOICES: fusion, visual_pooling, windowing, ...
_TARGET_OPTIONS = {"target_names": "names", "target_low": "low", "target_high": "high"}
_WEIGHT_FIELDS = ("audio_backbone_weights", "visual_backbone_weights")
# The kernel operator each attention fusion runs (the others run no rja_kernels operator).
_FUSION_OPERATORS = {"rja": "recursive_joint_attention", "jca": "joint_cross_attention"}


def number(kind: Callable[[str], Any], minimum: float, *, inclusive: bool = True) -> Callable[[str], Any]:
    """An argparse `type`: `kind(text)`, finite and `>= minimum` (`> minimum` unless `inclusive`)."""
    def convert(text: str) -> Any:
        value = kind(text)  # a ValueError is argparse's "invalid int value"
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum:g}, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its own messages
    return convert


POSITIVE_INT = number(int, 1)
COUNT = number(int, 0)
POSITIVE_FLOAT = number(float, 0, inclusive=False)
NON_NEGATIVE_FLOAT = number(float, 0)


def input_file(text: str) -> Path:
    """An argparse `type`: a path to an existing, readable file."""
    path = Path(text)
    problem = _file_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return path


def input_file_name(text: str) -> str:
    """`input_file` as a string (the model config stores plain strings)."""
    return str(input_file(text))


def output_dir(text: str) -> Path:
    """An argparse `type`: a folder to write into (created if absent), not an existing file."""
    path = Path(text)
    problem = "is a file, not a folder" if path.exists() and not path.is_dir() else _parent_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return path


def output_file(text: str) -> Path:
    """An argparse `type`: a file to write (its folder is created if absent), not an existing folder."""
    path = Path(text)
    problem = "is a folder, not a file" if path.is_dir() else _parent_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return path


def face_box(text: str) -> tuple[float, float, float, float]:
    """An argparse `type`: `X0,Y0,X1,Y1`, a box in the frame's pixels with X1 > X0 >= 0 and Y1 > Y0 >= 0."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected X0,Y0,X1,Y1, four numbers (pixels)")
    x0, y0, x1, y1 = values
    if not (x1 > x0 >= 0 and y1 > y0 >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: a box X0,Y0,X1,Y1 needs X1 > X0 >= 0 and Y1 > Y0 >= 0")
    return values


def device_name(text: str) -> str:
    """An argparse `type`: `auto` or a device torch knows (cpu, cuda, cuda:N, ...)."""
    if text != "auto":
        try:
            torch.device(text)
        except (RuntimeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a device: expected auto, cpu, cuda or cuda:N") from None
    return text


def _file_problem(path: Path) -> str | None:
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a folder, not a file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def _parent_problem(path: Path) -> str | None:
    # The first existing folder above `path` must be a folder, or creating `path` fails.
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"cannot be created: {parent} is a file"
    return None


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
    g.add_argument("--synthetic-videos", type=POSITIVE_INT, default=24,
                   help="synthetic: video files (default: %(default)s)")
    g.add_argument("--synthetic-seconds", type=POSITIVE_FLOAT, default=6.0,
                   help="synthetic: seconds per video (default: %(default)s)")
    g.add_argument("--synthetic-seed", type=int, default=0, help="synthetic: generator seed (default: %(default)s)")
    g.add_argument("--num-workers", type=COUNT, default=0, help="DataLoader worker processes (default: %(default)s)")


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
            convert = input_file_name if name in _WEIGHT_FIELDS else {"int": int, "float": float}.get(kind, str)
            g.add_argument(flag, type=convert, choices=_MODEL_CHOICES.get(name), default=None, help=help_text)
    g.add_argument("--target-names", type=_names, default=None,
                   help=f"comma-separated regression targets (default: {','.join(base.targets.names)})")
    g.add_argument("--target-low", type=float, default=None, help=f"(default: {base.targets.low})")
    g.add_argument("--target-high", type=float, default=None, help=f"(default: {base.targets.high})")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("runtime")
    g.add_argument("--config", type=input_file, default=None,
                   help="YAML or JSON file of option values (keys: long option names); the command line overrides it")
    g.add_argument("--device", type=device_name, default="auto",
                   help="auto (cuda if available), cpu, cuda, cuda:N (default: auto)")
    g.add_argument("--batch-size", type=POSITIVE_INT, default=4,
                   help="global batch of sub-sequences, split evenly over the processes (default: %(default)s)")
    g.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch printing")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=POSITIVE_INT, default=3, help="(default: %(default)s)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="(default: %(default)s)")
    g.add_argument("--lr", type=POSITIVE_FLOAT, default=1e-3, help="peak learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=NON_NEGATIVE_FLOAT, default=1e-4, help="(default: %(default)s)")
    g.add_argument("--momentum", type=NON_NEGATIVE_FLOAT, default=0.9, help="sgd momentum (default: %(default)s)")
    g.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="learning-rate schedule, stepped every batch (default: %(default)s)")
    g.add_argument("--warmup-epochs", type=NON_NEGATIVE_FLOAT, default=0.0,
                   help="linear warm-up before the schedule (default: %(default)s)")
    g.add_argument("--step-epochs", type=POSITIVE_FLOAT, default=10.0,
                   help="step schedule: epochs between decays (default: %(default)s)")
    g.add_argument("--step-gamma", type=POSITIVE_FLOAT, default=0.1,
                   help="step schedule: decay factor (default: %(default)s)")
    g.add_argument("--step-start-epochs", type=NON_NEGATIVE_FLOAT, default=0.0,
                   help="step schedule: S > 0 runs epochs 0..S at --step-start-factor x --lr, then epoch e at "
                        "step_gamma ** ((e - S) // step_epochs) x --lr (the authors': S 5) (default: %(default)s)")
    g.add_argument("--step-start-factor", type=POSITIVE_FLOAT, default=1.0,
                   help="step schedule: the LR factor of epochs 0..S (the authors' 0.1: their optimizer is built "
                        "with 1e-4 and train.py sets 1e-3 from epoch 6 on) (default: %(default)s)")
    g.add_argument("--grad-clip", type=NON_NEGATIVE_FLOAT, default=5.0,
                   help="max gradient norm, 0 for none (default: %(default)s)")
    g.add_argument("--loss", choices=LOSSES, default="ccc",
                   help="ccc: mean over targets of 1 - CCC over the global batch; ccc_sum: their sum (the "
                        "authors'); mse (default: %(default)s)")
    g.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                   help="shuffle the training windows each epoch (the authors' loader does not) (default: on)")
    g.add_argument("--best-on", choices=("raw", "postprocessed"), default="raw",
                   help="best.pt is the epoch of the best validation mean CCC, raw per frame or after the "
                        "authors' clipping and smoothing (default: %(default)s)")
    g.add_argument("--train-stride", type=POSITIVE_INT, default=None,
                   help="frames between training sub-sequence starts (default: clips * clip_frames, one "
                        "sub-sequence: windows do not overlap; smaller values overlap them; validation never "
                        "overlaps)")
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--out", type=output_dir, default=Path("runs/train"), help="output directory (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    g.add_argument("--overwrite", action="store_true", help="start over even if --out holds a run")
    g.add_argument("--stop-after", type=POSITIVE_INT, default=None,
                   help="end this process after this many epochs in total, as if killed; --resume goes on "
                        "(for preemptible jobs, and to test resuming)")
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (ignored, with a warning, on CPU)")
    g.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default="bfloat16", help="(default: %(default)s)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                   help="deterministic algorithms, so a run repeats bit for bit (default: on)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="also log to TensorBoard when torch.utils.tensorboard imports (default: on)")
    g.add_argument("--plot-videos", type=COUNT, default=3,
                   help="validation videos in the predicted-vs-true plot (default: %(default)s)")
    g.add_argument("--print-config", action="store_true", help="print the resolved options as JSON and exit")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv` over the values of the `--config` file it names (if any), then `check_options`."""
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None) is not None:
        parser.set_defaults(**load_config_file(pre.config, parser))
    args = parser.parse_args(argv)
    check_options(args)
    return args


def load_config_file(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's values by option dest, converted and checked like command-line values."""
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError:
        raise UsageError(f"--config {path}: not a text file (expected YAML or JSON)") from None
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise UsageError(f"--config {path}: not valid {kind} ({' '.join(str(e).split())})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: a config file must be a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise UsageError(f"--config {path}: unknown option {key!r}")
        out[dest] = _config_value(actions[dest], value, f"--config {path}: {key}")
    return out


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A config file's value for `action`, through the same conversion and checks as on the command line."""
    if value is None:
        return None
    if action.nargs == 0:  # a flag (store_true, --x/--no-x): the file must say true or false
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false, got {value!r}")
        return value
    if action.dest == "target_names" and isinstance(value, list):
        return tuple(str(v) for v in value)
    if isinstance(value, (dict, list)):
        raise UsageError(f"{where}: expected a single value, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(str(value))
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"{where}: {e}") from None
        except (TypeError, ValueError):
            kind = getattr(action.type, "__name__", "")
            raise UsageError(f"{where}: invalid {kind} value {value!r}") from None
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{where}: {value!r} is not one of {sorted(action.choices)}")
    return value


def check_options(args: argparse.Namespace) -> None:
    """The checks across options (and of file contents), once, right after parsing: every command's
    bad input fails here, in one line, before any data is generated or read. `--print-config` reads
    no data, so it skips the checks of the data and files (not those of the values)."""
    if getattr(args, "print_config", False):
        return
    data, root = getattr(args, "data", None), getattr(args, "data_root", None)
    if data in ("affwild2", "features") and root is None:
        raise UsageError(f"--data {data} needs --data-root")
    if root is not None:
        if data != "synthetic" and not root.exists():  # synthetic data is generated there
            raise UsageError(f"--data-root {root}: no such folder")
        if root.exists() and not root.is_dir():
            raise UsageError(f"--data-root {root}: is a file, not a folder")
    video_names(getattr(args, "videos", None))  # reads an @FILE list now, so a bad one fails before any work
    for name in _WEIGHT_FIELDS:
        weights = getattr(args, name, None)
        if weights is not None:
            try:
                check_weights_file(weights)
            except CheckpointError as e:
                raise UsageError(f"--{name.replace('_', '-')} {e}") from None


def model_config(args: argparse.Namespace, preset: Mapping[str, Any]) -> ModelConfig:
    """`ModelConfig(**preset)`, then the `--ablation` overrides, then the model options that were set."""
    config = ModelConfig(**preset)
    if args.ablation is not None:
        config = ModelConfig.ablation(args.ablation, base=config)
    overrides = {name: getattr(args, name) for name in _MODEL_FIELDS if getattr(args, name) is not None}
    targets = {field: getattr(args, dest) for dest, field in _TARGET_OPTIONS.items() if getattr(args, dest) is not None}
    try:
        if targets:
            overrides["targets"] = TargetConfig(**{**dataclasses.asdict(config.targets), **targets})
        return config.replace(**overrides)
    except ValueError as e:  # the config's own validation, reported with the options it names
        named = [f"--{dest.replace('_', '-')}" for dest in (*_MODEL_FIELDS, *_TARGET_OPTIONS)
                 if getattr(args, dest) is not None and re.search(rf"\b{_TARGET_OPTIONS.get(dest, dest)}\b", str(e))]
        raise UsageError(f"invalid model options{' (' + ', '.join(named) + ')' if named else ''}: {e}") from None


def check_backend(config: ModelConfig, device: torch.device, source: str = "--backend") -> None:
    """Fail before any work when a forced kernel backend cannot run on `device` (it would fail at the
    first batch); `source` says where the backend was chosen."""
    operator = _FUSION_OPERATORS.get(config.fusion)
    if config.backend == "auto" or operator is None:
        return
    reason = why_unavailable(config.backend, device, torch.float32, operator)
    if reason is not None:
        raise UsageError(f"{source} {config.backend} cannot run on {device} here: {reason}")


def video_names(spec: str | None) -> list[str] | None:
    """`--videos`: None, `a,b,c`, or `@FILE` (one name per line, `#` comments)."""
    if spec is None:
        return None
    if spec.startswith("@"):
        path = Path(spec[1:])
        problem = _file_problem(path)
        if problem:
            raise UsageError(f"--videos {spec}: {problem}")
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"--videos {spec}: not a text file of video names") from None
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
