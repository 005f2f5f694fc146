"""Every bad-input rule of SPEC.md raises a clear error naming the argument."""

import pytest
import torch

import rja_kernels
from rja_kernels import BackendUnavailableError
from rja_kernels.testing import make_inputs


def call(inp, iterations=2, backend="reference"):
    return rja_kernels.recursive_joint_attention(**inp, iterations=iterations, backend=backend)


def base(**kw):
    return make_inputs(2, 4, 6, 5, 3, 2, **kw)


def with_(name, value, **kw):
    inp = base(**kw)
    inp[name] = value
    return inp


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("xa", [[1.0]], TypeError, "xa must be a torch.Tensor"),
        ("w_hv", None, TypeError, "w_hv must be a torch.Tensor"),
        ("xv", torch.ones(2, 4, 5, dtype=torch.int64), TypeError, "xv must have a floating dtype"),
        ("w_ca", torch.ones(2, 3, 11, dtype=torch.float64), TypeError, "w_ca has dtype torch.float64"),
        ("xa", torch.ones(2, 4, 6, device="meta"), ValueError, "xv is on cpu but xa is on meta"),
        ("w_a", torch.ones(2, 3, 4, device="meta"), ValueError, "w_a is on meta"),
        ("xa", torch.ones(8, 6), ValueError, r"xa must be 3-D"),
        ("w_ja", torch.ones(4, 4), ValueError, r"w_ja must be 3-D"),
        ("xv", torch.ones(3, 4, 5), ValueError, r"xv must have shape \[B, L, dv\] with B=2, L=4"),
        ("xv", torch.ones(2, 5, 5), ValueError, r"xv must have shape \[B, L, dv\]"),
        ("xa", torch.ones(2, 4, 0), ValueError, "da must be >= 1"),
        ("w_ja", torch.ones(2, 3, 3), ValueError, r"w_ja must have shape \[Tw, L, L\] = \[2, 4, 4\]"),
        ("w_jv", torch.ones(2, 4, 5), ValueError, r"w_jv must have shape \[Tw, L, L\]"),
        ("w_v", torch.ones(2, 2, 4), ValueError, r"w_v must have shape \[Tw, k, L\] = \[2, 3, 4\]"),
        ("w_ca", torch.ones(2, 3, 10), ValueError, r"w_ca must have shape \[Tw, k, da \+ dv\] = \[2, 3, 11\]"),
        ("w_cv", torch.ones(2, 4, 11), ValueError, r"w_cv must have shape \[Tw, k, da \+ dv\]"),
        ("w_ha", torch.ones(2, 4, 2), ValueError, r"w_ha must have shape \[Tw, L, k\] = \[2, 4, 3\]"),
        ("w_hv", torch.ones(1, 4, 3), ValueError, r"w_hv must have shape \[Tw, L, k\] = \[2, 4, 3\]"),
        ("w_a", torch.ones(3, 3, 4), ValueError, r"Tw = 1 \(shared\) or Tw = iterations = 2"),
        ("w_a", torch.ones(2, 0, 4), ValueError, r"k \(w_a.shape\[1\]\) must be >= 1"),
    ],
)
def test_bad_argument(name, value, error, match):
    with pytest.raises(error, match=match):
        call(with_(name, value))


@pytest.mark.parametrize(("iterations", "error", "match"), [
    (0, ValueError, "iterations must be >= 1"),
    (-1, ValueError, "iterations must be >= 1"),
    (2.0, TypeError, "iterations must be an int"),
    (True, TypeError, "iterations must be an int"),
])
def test_bad_iterations(iterations, error, match):
    with pytest.raises(error, match=match):
        call(base(), iterations=iterations)


def test_tw_must_match_iterations():
    inp = make_inputs(2, 4, 6, 5, 3, iterations=3, tw=2)
    with pytest.raises(ValueError, match="Tw = 1 .* or Tw = iterations = 3"):
        call(inp, iterations=3)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        call(base(), backend="fast")
    with pytest.raises(TypeError, match="backend must be a str"):
        call(base(), backend=None)


def test_forced_backend_that_cannot_run_says_why():
    # No CUDA device here: the cuda backend must refuse CPU tensors, never fall back silently.
    with pytest.raises(BackendUnavailableError, match="backend='cuda' cannot run torch.float32 tensors on cpu"):
        call(base(), backend="cuda")


def test_non_contiguous_inputs_are_accepted():
    inp = base(dtype=torch.float64)
    strided = {n: t.transpose(-1, -2).contiguous().transpose(-1, -2) for n, t in inp.items()}
    assert not strided["xa"].is_contiguous()
    for got, expect in zip(call(strided), call(inp)):
        torch.testing.assert_close(got, expect)
