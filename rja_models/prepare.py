"""Cut aligned face crops out of videos into the Aff-Wild2 layout the data loaders read.

    python -m rja_models.prepare interviews/*.mp4 --out data/mine

For each VIDEO (named by its file name without the extension), under ROOT:

    videos/<name>.<ext>                  the video (a hard link, else a copy): the loaders read its audio
    cropped_aligned/<name>/<NNNNN>.jpg   the aligned face crop of frame NNNNN (1-based), only on frames
                                         where the face was found (the loaders fill the others from
                                         their neighbours, as with Aff-Wild2's own crops)
    cropped_aligned/<name>/faces.csv     per frame (0-based): found or not, the face box x0,y0,x1,y1
    annotation_templates/<name>.txt      "valence,arousal", then one "-5,-5" (unlabelled) per frame: fill
                                         it in and move it to VA_Estimation_Challenge/Train_Set/ (or
                                         Validation_Set/) to train with --data affwild2 --data-root ROOT

One person per video: the largest face at the first frame showing one (--face-index, --box pick
another), followed through the video. A video prepared before with the same options is skipped (its
crop folder's .prepared marker is written last); an interrupted one is redone; --overwrite redoes
all. Needs the faces extra: pip install "rja[faces]".
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from rja_models.cli import UsageError, command_parser, run_command
from rja_models.data import DEFAULT_IMAGE_SIZE, VIDEO_EXTENSIONS, probe_video
from rja_models.inference.faces import (
    DEFAULT_DETECT_EVERY,
    DEFAULT_DETECT_WIDTH,
    FacePipeline,
    FaceTrack,
    NoFaceFound,
    aligned_crops,
    require_face_models,
    track_video_file,
)
from rja_models.training.logs import progress_enabled, say
from rja_models.training.options import COUNT, POSITIVE_INT, face_box, input_file, number, output_dir, parse_args

PROG = "python -m rja_models.prepare"
MARKER = ".prepared"
"""In a video's crop folder, written last: the options and the source it was made from (JSON)."""
JPEG_QUALITY = 92


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, __doc__, usage="%(prog)s VIDEO [VIDEO ...] --out ROOT [options]")
    parser.add_argument("inputs", nargs="+", type=input_file, metavar="VIDEO",
                        help=f"video files ({', '.join(VIDEO_EXTENSIONS)}: what the data loaders read)")
    parser.add_argument("--out", type=output_dir, required=True, metavar="ROOT",
                        help="the tree's root folder (created if absent)")
    parser.add_argument("--crop-size", type=number(int, 16), default=DEFAULT_IMAGE_SIZE,
                        help="side of the square crops, the model's image size (default: %(default)s)")
    parser.add_argument("--face-index", type=COUNT, default=0,
                        help="follow the N-th largest face instead of the largest, 0 (default: %(default)s)")
    parser.add_argument("--box", type=face_box, default=None, metavar="X0,Y0,X1,Y1",
                        help="follow the face overlapping this box (video pixels) most; overrides --face-index")
    parser.add_argument("--detect-every", type=POSITIVE_INT, default=DEFAULT_DETECT_EVERY,
                        help="run the face detector every N frames, follow the landmarks in between "
                             "(default: %(default)s)")
    parser.add_argument("--detect-width", type=number(int, 80), default=DEFAULT_DETECT_WIDTH,
                        help="detect on frames downscaled to this width; larger finds smaller faces, slower "
                             "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="redo videos prepared before")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no messages")
    return parser


def _check_inputs(paths: Sequence[Path]) -> None:
    """Every input fails here, before any work: unreadable files, names the loaders cannot pair up."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise UsageError(f"{path}: the data loaders read videos ending in {', '.join(VIDEO_EXTENSIONS)}; "
                             f"remux it first (e.g. ffmpeg -i {path} -c copy {path.with_suffix('.mkv')})")
        probe_video(path)  # a DataError names the file
        if path.stem in seen:
            raise UsageError(f"{seen[path.stem]} and {path}: two videos named {path.stem!r} (the tree names a video "
                             "by its file name without the extension)")
        seen[path.stem] = path


def _record(path: Path, args: argparse.Namespace) -> dict:
    """What the marker records: the options and the source file (a changed file or option redoes it)."""
    st = path.stat()
    return {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "crop_size": args.crop_size, "face_index": args.face_index,
            "box": None if args.box is None else list(args.box), "detect_every": args.detect_every,
            "detect_width": args.detect_width}


def _done(folder: Path, record: dict) -> bool:
    try:
        saved = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return {k: saved.get(k) for k in record} == record


def _link_video(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source``: a hard link, else (another file system) a copy."""
    if target.exists():
        if os.path.samefile(source, target):
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_faces_csv(path: Path, track: FaceTrack) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "detected", "x0", "y0", "x1", "y1"])
        for i, (found, box) in enumerate(zip(track.detected, track.boxes)):
            writer.writerow([i, int(found), *(f"{v:.1f}" for v in box)])


def _write_template(path: Path, num_frames: int) -> None:
    """An all-unlabelled annotation file, unless one is there already (it may be being filled in)."""
    if not path.exists():
        path.write_text("valence,arousal\n" + "-5,-5\n" * num_frames)


def prepare_video(path: Path, root: Path, pipeline: FacePipeline, *, progress: bool) -> FaceTrack:
    """Write one video's crops, faces.csv, video link and annotation template under ``root``; the
    marker is the caller's (written last).

    Raises:
        NoFaceFound: no frame shows a face (nothing is left in its crop folder).
    """
    name = path.stem
    folder = root / "cropped_aligned" / name
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted or outdated run: no stale crop may survive
    folder.mkdir(parents=True)
    try:
        track = track_video_file(path, pipeline, progress=progress)
    except NoFaceFound:
        folder.rmdir()
        raise
    crops = aligned_crops(path, track, pipeline)
    for i, crop in enumerate(tqdm(crops, total=track.num_frames, desc="crops", unit="frame", disable=not progress,
                                  leave=False)):
        if track.detected[i]:
            Image.fromarray(crop).save(folder / f"{i + 1:05d}.jpg", quality=JPEG_QUALITY)
    _write_faces_csv(folder / "faces.csv", track)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    _link_video(path, root / "videos" / path.name)
    (root / "annotation_templates").mkdir(parents=True, exist_ok=True)
    _write_template(root / "annotation_templates" / f"{name}.txt", track.num_frames)
    return track


def run(args: argparse.Namespace) -> Path:
    """Prepare every video of ``args.inputs`` under ``args.out``; returns ``args.out``."""
    require_face_models()
    _check_inputs(args.inputs)
    pipeline = FacePipeline(crop_size=args.crop_size, face_index=args.face_index, box=args.box,
                            detect_every=args.detect_every, detect_width=args.detect_width)
    progress = progress_enabled(args.quiet, True)
    faceless = []
    for path in args.inputs:
        folder = args.out / "cropped_aligned" / path.stem
        record = _record(path, args)
        if not args.overwrite and _done(folder, record):
            say(f"{path.stem}: prepared before with these options, skipped", args.quiet)
            continue
        say(f"{path.stem}: {probe_video(path).num_frames} frames", args.quiet)
        try:
            track = prepare_video(path, args.out, pipeline, progress=progress)
        except NoFaceFound as e:
            say(f"{path.stem}: skipped: {e.reason}", args.quiet)
            faceless.append(path)
            continue
        found = int(np.count_nonzero(track.detected))
        (folder / MARKER).write_text(json.dumps({**record, "frames": track.num_frames, "crops": found}))
        say(f"{path.stem}: a face on {found} of {track.num_frames} frames ({found / track.num_frames:.0%}) -> "
            f"{folder}", args.quiet)
    if faceless:
        raise UsageError(f"no face found in {', '.join(map(str, faceless))} (the other videos are prepared); a "
                         "larger --detect-width finds smaller faces")
    return args.out


def main(argv: Sequence[str] | None = None) -> Path:
    """The command: `run` on `argv`; a bad input is one line on stderr and exit code 2."""
    return run_command(PROG, lambda: run(parse_args(build_parser(), argv)))


if __name__ == "__main__":
    main()
