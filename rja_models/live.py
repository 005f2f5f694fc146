"""Live valence/arousal from a camera, a network stream, a pipe or a file played at its own pace.

    python -m rja_models.live SOURCE --checkpoint runs/train/best.pt [--out FILE] [--stats]

SOURCE is anything FFmpeg opens: a device (`/dev/video0 --format v4l2`), a URL (rtsp://, http://,
udp://), `-` for a stream on standard input (e.g. `ffmpeg ... -f matroska - | python -m ...`),
or a file (`--realtime` plays it at its frame rate, as a live source). Audio and video are decoded
as they arrive; every window of clips the model takes (its checkpoint's clips x clip span frames,
one every `--stride` frames) is predicted as soon as its last frame and audio are in, causally,
and the rows of its frames are written at once: `frame,timestamp,<targets>,face` as CSV (default)
or JSON lines, to stdout or `--out`. A window gets the same input as in `rja_models.predict`, so
where the windows coincide the numbers are the same.

When inference falls behind, whole windows are dropped (said on stderr, counted in the stats)
rather than letting the latency grow; `--no-drop` waits instead (for a recorded stream on a pipe).
Ctrl-C ends the run cleanly: the window being predicted is written, the output is complete, exit
code 0. `--stats` prints on exit the frames per second sustained, the median and 95th percentile
latency from a frame's arrival to its row being written, and the windows dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from rja_models.cli import UsageError, command_parser, run_command
from rja_models.data.video import fit_image
from rja_models.data.windows import Windowing
from rja_models.inference.model import load_for_inference
from rja_models.inference.stream import (
    LiveStats,
    Prepare,
    RowWriter,
    SourceReader,
    WindowScheduler,
    open_source,
    predict_window,
    run_stream,
)
from rja_models.training.options import (
    COUNT,
    POSITIVE_INT,
    device_name,
    input_file,
    output_file,
    parse_args,
)

PROG = "python -m rja_models.live"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, __doc__, usage="%(prog)s SOURCE --checkpoint CKPT [options]")
    parser.add_argument("source", help="a device, URL, file, or - for standard input")
    parser.add_argument("--checkpoint", type=input_file, required=True, help="a checkpoint of rja_models.train")
    g = parser.add_argument_group("input")
    g.add_argument("--format", default=None, help="FFmpeg input format (v4l2, avfoundation, matroska, ...; "
                                                  "default: detected)")
    g.add_argument("--input-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an FFmpeg input option (video_size=640x480, framerate=30, rtsp_transport=tcp); repeatable")
    g.add_argument("--realtime", action="store_true", help="deliver frames at their timestamps (play a file live)")
    g.add_argument("--visual-only", action="store_true", help="accept a source without audio (audio = silence)")
    g.add_argument("--whole-frame", action="store_true", help="the whole frame is the model's input, no face detection")
    g.add_argument("--face-index", type=COUNT, default=0, help="which detected face to follow (default: %(default)s)")
    g = parser.add_argument_group("inference")
    g.add_argument("--stride", type=POSITIVE_INT, default=None,
                   help="frames between window starts (default: the window length, windows back to back)")
    g.add_argument("--drop", action=argparse.BooleanOptionalAction, default=True,
                   help="drop whole windows when inference falls behind (default: on; --no-drop waits)")
    g.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    g = parser.add_argument_group("output")
    g.add_argument("--out", type=output_file, default=None, help="write the rows here (default: stdout)")
    g.add_argument("--format-out", choices=("csv", "jsonl"), default="csv", help="(default: %(default)s)")
    g.add_argument("--stats", action="store_true", help="print throughput, latency and drops on exit (stderr)")
    g.add_argument("--stats-json", type=output_file, default=None, help="also write the stats to this JSON file")
    g.add_argument("--quiet", action="store_true", help="no messages on stderr (the stats still, if asked)")
    return parser


def input_options(pairs: Sequence[str]) -> dict[str, str]:
    """`--input-option KEY=VALUE`s as a dict."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--input-option {pair!r}: expected KEY=VALUE")
        options[key] = value
    return options


def frame_preparer(args: argparse.Namespace, image_size: int, say: Any) -> Prepare:
    """The model image of a decoded frame: the aligned face crop when the face pipeline is installed
    (and not --whole-frame), else the whole frame fitted as `VideoReader` fits it."""
    if not args.whole_frame:
        from rja_models.inference.faces import FaceModelsMissing, FacePipeline, require_face_models

        try:
            require_face_models()
        except FaceModelsMissing as e:
            say(f"{e}; the whole frame is the model's input")
        else:
            faces = FacePipeline(crop_size=image_size, face_index=args.face_index).stream()

            def face_crop(frame: Any) -> tuple[Any, bool]:
                crop, _, found = faces.update(frame.to_ndarray(format="rgb24"))
                return crop, bool(found)

            return face_crop
    return lambda frame: (fit_image(frame.to_image(), image_size), None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Stream SOURCE through the model until it ends or Ctrl-C; returns the stats."""
    def say(message: str) -> None:
        if not args.quiet:
            print(f"{PROG}: {message}", file=sys.stderr, flush=True)

    device, model, config, ckpt = load_for_inference(args.checkpoint, args.device, "stream")
    # Windows placed every --stride frames from frame 0 ("tiled" windows are placed ahead of time);
    # a window inside the stream shows the same frames under either layout.
    windowing = dataclasses.replace(Windowing.from_config(config), layout="strided")
    container = open_source(args.source, args.format, input_options(args.input_option))
    audio = config.uses_audio and not args.visual_only
    if audio and not container.streams.audio:
        container.close()
        raise UsageError(f"{args.source}: has no audio stream; pass --visual-only to predict from the frames "
                         "alone (the audio is then silence)")
    prepare = frame_preparer(args, config.image_size, say)
    stats = LiveStats()
    stop = threading.Event()
    scheduler = WindowScheduler(windowing, args.stride or windowing.length, config=config, extra=ckpt.get("extra"),
                                stream=container.streams.video[0], audio=audio, drop=args.drop, stats=stats, say=say)
    reader = SourceReader(container, scheduler, stop, realtime=args.realtime, say=say)

    def on_sigint(signum: int, frame: Any) -> None:
        stop.set()  # a flag, not an exception: the row being written is never cut
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") if args.out else nullcontext(sys.stdout) as out:
            writer = RowWriter(out, list(config.targets.names), args.format_out)
            run_stream(scheduler, reader, stop,
                       lambda window: predict_window(model, device, windowing, window, prepare, config.targets.count),
                       writer, stats)
    finally:
        signal.signal(signal.SIGINT, previous)
        summary = stats.summary()
        if args.stats:
            print(f"{PROG}: stats " + ", ".join(f"{k} {v}" for k, v in summary.items()), file=sys.stderr, flush=True)
        if args.stats_json:
            args.stats_json.parent.mkdir(parents=True, exist_ok=True)
            args.stats_json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command: `run` on `argv`; a bad input is one line on stderr and exit code 2."""
    return run_command(PROG, lambda: run(parse_args(build_parser(), argv)))


if __name__ == "__main__":
    main()
