"""Predict per-frame valence/arousal for any video file.

    python -m rja_models.predict VIDEO --checkpoint runs/train/best.pt [--out DIR]
    python -m rja_models.predict talk.mkv --checkpoint best.pt --smooth 0.5 --overlay talk-va.mp4
    python -m rja_models.predict crops.mp4 --checkpoint best.pt --whole-frame    # frames already face crops

Writes `DIR/<video>.csv` (frame, timestamp in seconds, one column per target, and `face`: 1 where the
face was detected on that frame, 0 where its box is interpolated from the neighbouring detections,
empty with --whole-frame) and `DIR/<video>.png` (the curves; frames without a detected face shaded).
`--overlay OUT.mp4` (.mkv, .mov) also writes the video with the face box, a gauge per target and the
last seconds' trace drawn on it, and its original audio.

The model sees one subject's face, detected, tracked and aligned in every frame like Aff-Wild2's
crops (`rja_models.inference.faces`; the largest face, or `--face-index N`, or the one in `--box`);
`--whole-frame` gives it the whole frame instead (for videos that are face crops already).
Windows overlap (`--stride`, default half a window); a clip's prediction belongs to the centre of its
span, averaged where windows overlap and interpolated linearly between centres, so the curve moves
every frame (`rja_models.inference.windows`); `--smooth S` adds a centred moving average of S seconds.
A video without an audio stream is an error unless `--visual-only` (the audio is then silence, which
an audio-visual model was not trained on: expect worse predictions).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rja_models.cli import UsageError, command_parser, run_command
from rja_models.data import VideoFileDataset, VideoInfo, Windowing, probe_video
from rja_models.inference.faces import FacePipeline, FaceTrack, aligned_crops, require_face_models, track_video_file
from rja_models.inference.model import load_for_inference
from rja_models.inference.overlay import OVERLAY_EXTENSIONS, write_overlay
from rja_models.inference.windows import frame_predictions
from rja_models.training.data import eval_loader
from rja_models.training.distributed import DistContext
from rja_models.training.evaluation import predict_windows
from rja_models.training.logs import progress_enabled, say
from rja_models.training.options import (
    COUNT,
    NON_NEGATIVE_FLOAT,
    POSITIVE_INT,
    device_name,
    face_box,
    input_file,
    output_dir,
    output_file,
    parse_args,
)
from rja_models.training.plots import plot_series

PROG = "python -m rja_models.predict"
# Face crops of longer videos go to a memory-mapped file in a temporary folder, not into memory.
_CROPS_IN_MEMORY_BYTES = 1 << 30


def overlay_file(text: str) -> Path:
    """An argparse `type`: an `output_file` with one of the extensions of `OVERLAY_EXTENSIONS`."""
    path = output_file(text)
    if path.suffix.lower() not in OVERLAY_EXTENSIONS:
        raise argparse.ArgumentTypeError(f"{text}: the overlay is H.264 video; name a {', '.join(OVERLAY_EXTENSIONS)}"
                                         " file")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, __doc__, usage="%(prog)s VIDEO --checkpoint CKPT [options]")
    parser.add_argument("video", type=input_file, help="any video file FFmpeg reads")
    parser.add_argument("--checkpoint", type=input_file, required=True, help="a checkpoint of rja_models.train")
    parser.add_argument("--out", type=output_dir, default=Path("predictions"),
                        help="output directory (default: %(default)s)")
    parser.add_argument("--overlay", type=overlay_file, default=None,
                        help="also write the video with the face box and the predictions drawn on it, and its audio "
                             f"({', '.join(OVERLAY_EXTENSIONS)})")
    parser.add_argument("--stride", type=POSITIVE_INT, default=None,
                        help="frames between window starts, at most one window (default: half a window, in whole "
                             "clips; the checkpoint's tiled layout places its windows itself)")
    parser.add_argument("--smooth", type=NON_NEGATIVE_FLOAT, default=0.0,
                        help="centred moving average of the curve over this many seconds (default: 0, none)")
    parser.add_argument("--whole-frame", action="store_true",
                        help="the model sees the whole frame (no face detection): for videos of face crops")
    parser.add_argument("--face-index", type=COUNT, default=None,
                        help="the subject is the N-th largest face at the first detection (default: 0, the largest)")
    parser.add_argument("--box", type=face_box, default=None, metavar="X0,Y0,X1,Y1",
                        help="the subject is the face overlapping this box (pixels of the frame) most")
    parser.add_argument("--visual-only", action="store_true", help="accept a video without audio (audio = silence)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="(default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no messages")
    return parser


def default_stride(windowing: Windowing) -> int | None:
    """Half a window, in whole clip spans (so the clips of overlapping windows share centres); None
    for the "tiled" layout, which places its windows itself."""
    if windowing.layout == "tiled":
        return None
    return max(windowing.span, windowing.length // 2 // windowing.span * windowing.span)


def check_inputs(args: argparse.Namespace, windowing: Windowing, info: VideoInfo, uses_audio: bool) -> None:
    """The checks across the options, the checkpoint and the video, before any work."""
    if args.whole_frame:
        for flag, value in (("--face-index", args.face_index), ("--box", args.box)):
            if value is not None:
                raise UsageError(f"{flag} chooses a face for the face pipeline; --whole-frame has none")
    else:
        require_face_models()
    if args.stride is not None:
        if windowing.layout == "tiled":
            raise UsageError(f"--stride {args.stride}: --checkpoint {args.checkpoint} has the tiled window layout, "
                             "which places its windows itself")
        if args.stride > windowing.length:
            raise UsageError(f"--stride {args.stride}: at most the window of {windowing.length} frames, or frames "
                             "between windows go unseen")
    if args.box is not None and (args.box[2] > info.width or args.box[3] > info.height):
        raise UsageError(f"--box {','.join(f'{v:g}' for v in args.box)}: outside the {info.width}x{info.height} "
                         f"frame of {args.video}")
    if args.overlay is not None and args.overlay.resolve() == args.video.resolve():
        raise UsageError(f"--overlay {args.overlay}: is the input video")
    # Checked here, not left to the dataset, whose message gives the Python API's visual_only=True.
    if uses_audio and not args.visual_only and not info.has_audio:
        raise UsageError(f"{args.video}: has no audio stream; pass --visual-only to predict from the frames "
                         "alone (the audio is then silence)")


def face_crops(video: Path, track: FaceTrack, pipeline: FacePipeline, workdir: Path, progress: bool) -> np.ndarray:
    """uint8 [N, crop, crop, 3]: the aligned crop of every frame, in memory, or for a long video in a
    memory-mapped file under ``workdir``."""
    shape = (track.num_frames, pipeline.crop_size, pipeline.crop_size, 3)
    if math.prod(shape) > _CROPS_IN_MEMORY_BYTES:
        crops = np.lib.format.open_memmap(workdir / "crops.npy", mode="w+", dtype=np.uint8, shape=shape)
    else:
        crops = np.empty(shape, np.uint8)
    bar = tqdm(aligned_crops(video, track, pipeline), total=shape[0], desc="crops", unit="frame", leave=False,
               disable=not progress)
    for i, crop in enumerate(bar):
        crops[i] = crop
    return crops


def run(args: argparse.Namespace) -> Path:
    """Write the CSV, the plot and the --overlay video; returns the CSV's path."""
    device, model, config, ckpt = load_for_inference(args.checkpoint, args.device, "video")
    windowing = Windowing.from_config(config)
    info = probe_video(args.video)
    check_inputs(args, windowing, info, config.uses_audio)
    visual_only = args.visual_only or not config.uses_audio
    if args.visual_only and config.uses_audio:
        warnings.warn("--visual-only with an audio-visual model: its audio input is silence", stacklevel=2)
    progress = progress_enabled(args.quiet, True)
    with contextlib.ExitStack() as stack:
        track = crops = None
        if not args.whole_frame:
            pipeline = FacePipeline(crop_size=config.image_size, face_index=args.face_index or 0, box=args.box)
            track = track_video_file(args.video, pipeline, progress=progress)
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rja-crops-")))
            crops = face_crops(args.video, track, pipeline, workdir, progress)
        # Clips cut as in training: windowing, and each clip's audio the same span of time at any frame rate.
        dataset = VideoFileDataset.for_model(args.video, config, ckpt.get("extra"), visual_only=visual_only,
                                             stride=args.stride or default_stride(windowing), crops=crops)
        records = predict_windows(model, eval_loader(dataset, args.batch_size, DistContext(device=device), 0),
                                  device, progress=progress, desc=args.video.name)
    times = info.timestamps
    pred = frame_predictions(records, times, args.smooth)
    names, targets = config.targets.names, config.targets
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.video.stem
    csv_path = args.out / f"{stem}.csv"
    face = None if track is None else track.detected
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "timestamp", *names, "face"])
        for i, (t, row) in enumerate(zip(times, pred)):
            writer.writerow([i, f"{t:.6f}", *(f"{v:.6f}" for v in row), "" if face is None else int(face[i])])
    plot_series({stem: {"x": times, "pred": pred, "no_face": None if face is None else ~face}}, names,
                args.out / f"{stem}.png", xlabel="time (s)", ylim=(targets.low, targets.high))
    if args.overlay is not None:
        write_overlay(args.video, args.overlay, times, pred, names, low=targets.low, high=targets.high, track=track,
                      progress=progress)
    faces = "" if face is None else f", a face detected on {int(face.sum())}"
    say(f"{len(pred)} frames{faces}: mean " + ", ".join(f"{n} {m:+.3f}" for n, m in zip(names, np.mean(pred, axis=0)))
        + f"; wrote {csv_path}, {stem}.png" + ("" if args.overlay is None else f" and {args.overlay}"), args.quiet)
    return csv_path


def main(argv: Sequence[str] | None = None) -> Path:
    """The command: `run` on `argv`; a bad input is one line on stderr and exit code 2."""
    return run_command(PROG, lambda: run(parse_args(build_parser(), argv)))


if __name__ == "__main__":
    main()
