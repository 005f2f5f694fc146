"""Window placement and clip sampling (`rja_models.data.windows`): the authors' tiled reader, listed
frame by frame for the first windows of a known video, and the default strided windows."""

from __future__ import annotations

import numpy as np
import pytest

from rja_models.data import Windowing, authors_clip_frames, subsequence_starts

# configs/affwild2.yaml: 16 clips of 32 frames showing every 4th (seq_length 512, subseq_length 32,
# dilation 4, stride 1 in the authors' config_file.json).
AUTHORS = Windowing(clips=16, clip_frames=8, dilation=4, layout="tiled", label_frame="last")


def test_authors_window_starts():
    # Their first window ends at frame id 481 (1-based), i.e. covers frames -31..480 (0-based); the
    # next 31 end one frame later each, then the window jumps to end at 993 (= 481 + 512), etc.
    starts = AUTHORS.starts(1200)
    assert starts[:32] == list(range(-31, 1))
    assert starts[32:64] == list(range(481, 513))
    # Evaluation keeps every window with a clip ending inside the video (its first ends at start + 31).
    # (the windows starting 993..1024 hold the clips ending at 1024..1199, the last ones padding).
    assert starts[64:] == list(range(993, 1025))
    # Training keeps the windows that end inside the video (last frame start + 511 <= 1199).
    assert AUTHORS.starts(1200, training=True) == [*range(-31, 1), *range(481, 513)]
    with pytest.raises(ValueError, match="tiled"):
        AUTHORS.starts(1200, stride=8)


def test_authors_first_windows_frame_by_frame():
    n = 1200  # every frame in the video (evaluation: all frames available)
    first = AUTHORS.clip_frame_indices(-31, n)
    # Clip 0 spans frames -31..0: only frame 0 exists, repeated (their "fewer than 8" rule).
    assert first[0].tolist() == [0] * 8
    # Clip l spans 32 l - 31 .. 32 l: every 4th frame ending on the span's last (their ids 5, 9, ..., 33).
    assert first[1].tolist() == [4, 8, 12, 16, 20, 24, 28, 32]
    assert first[2].tolist() == [36, 40, 44, 48, 52, 56, 60, 64]
    assert first[15].tolist() == [452, 456, 460, 464, 468, 472, 476, 480]
    # The next windows: clip 0 holds 2, 3, ... frames (repeated last), then 8..15 consecutive, then
    # every 2nd, every 3rd, and from the 32nd window (start 0) every 4th.
    assert AUTHORS.clip_frame_indices(-30, n)[0].tolist() == [0, 1, 1, 1, 1, 1, 1, 1]
    assert AUTHORS.clip_frame_indices(-30, n)[1].tolist() == [5, 9, 13, 17, 21, 25, 29, 33]
    assert AUTHORS.clip_frame_indices(-29, n)[0].tolist() == [0, 1, 2, 2, 2, 2, 2, 2]
    assert AUTHORS.clip_frame_indices(-23, n)[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert AUTHORS.clip_frame_indices(-15, n)[0].tolist() == [2, 4, 6, 8, 10, 12, 14, 16]
    assert AUTHORS.clip_frame_indices(-7, n)[0].tolist() == [3, 6, 9, 12, 15, 18, 21, 24]
    assert AUTHORS.clip_frame_indices(0, n)[0].tolist() == [3, 7, 11, 15, 19, 23, 27, 31]
    # Labels: one per clip, at the span's last frame.
    rows, label_at = AUTHORS.label_rows(-31, first)
    assert rows.tolist() == [32 * clip for clip in range(16)] and label_at.tolist() == rows.tolist()


def test_authors_rule_on_missing_frames():
    span = np.arange(100, 132)
    assert authors_clip_frames(span, 8, 4).tolist() == list(range(103, 132, 4))
    # 20 labelled frames: every 2nd from the last, the last 8 of those (their np.flip(...)[::2][-8:]).
    assert authors_clip_frames(span[:20], 8, 4).tolist() == [105, 107, 109, 111, 113, 115, 117, 119]
    assert authors_clip_frames(span[:5], 8, 4).tolist() == [100, 101, 102, 103, 104, 104, 104, 104]
    assert authors_clip_frames(span[:0], 8, 4).tolist() == []
    # Training shows the labelled frames only: frames 4..16 unlabelled in clip 1 of the first window.
    available = np.ones(1200, bool)
    available[4:17] = False
    shown = AUTHORS.clip_frame_indices(-31, 1200, available)
    assert shown[1].tolist() == list(range(18, 33, 2))  # 19 labelled (1-3, 17-32): every 2nd from 32
    # The span's last frame unlabelled: the clip's label is its last shown frame's.
    available[32] = False
    shown = AUTHORS.clip_frame_indices(-31, 1200, available)
    rows, label_at = AUTHORS.label_rows(-31, shown)
    assert rows[1] == 32 and label_at[1] == 31


@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 511, 512, 513, 1000, 1537])
def test_every_frame_is_the_last_frame_of_exactly_one_clip(n):
    ends = np.concatenate([AUTHORS.span_ends(s) for s in AUTHORS.starts(n)])
    inside = ends[ends < n]
    assert sorted(inside.tolist()) == list(range(n))


def test_tail_clips_and_blanks():
    n = 40
    assert AUTHORS.starts(n) == list(range(-31, 1))
    shown = AUTHORS.clip_frame_indices(0, n)
    # Clip 1 spans 32..63: the 8 frames 32..39 exist (shown consecutively); its row, at 63, is padding.
    assert shown[1].tolist() == list(range(32, 40))
    assert (shown[2:] == -1).all()  # clips wholly past the end show nothing (blank)
    rows, label_at = AUTHORS.label_rows(0, shown)
    assert rows[0] == 31 and (rows[1:] >= n).all() and label_at[1] == 39


def test_strided_default_is_back_to_back_consecutive_frames():
    w = Windowing(clips=8, clip_frames=4)
    assert w.starts(100) == subsequence_starts(100, 32, 32) == [0, 32, 64, 96]
    assert w.starts(100, stride=16) == [0, 16, 32, 48, 64, 80]
    shown = w.clip_frame_indices(32, 100)
    assert shown.reshape(-1).tolist() == list(range(32, 64))
    rows, label_at = w.label_rows(32, shown)
    assert rows.tolist() == label_at.tolist() == list(range(32, 64))


def test_strided_dilated_grid_ends_on_each_span():
    w = Windowing(clips=2, clip_frames=3, dilation=2)
    assert (w.span, w.length, w.rows) == (6, 12, 12)
    assert w.clip_frame_indices(12, 100).tolist() == [[13, 15, 17], [19, 21, 23]]
    last = Windowing(clips=2, clip_frames=3, dilation=2, label_frame="last")
    assert last.rows == 2 and last.label_rows(12, last.clip_frame_indices(12, 100))[0].tolist() == [17, 23]
