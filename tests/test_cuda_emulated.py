"""The CUDA backend's kernels (csrc/cuda), executed on CPU by the host CUDA emulator, against the
reference: forward outputs, saved iteration features and every gradient. This is CI's proof of
the CUDA kernels; tests/test_cuda_gpu.py repeats the comparison on a GPU where there is one."""

import pytest
import torch

from rja_kernels import reference
from rja_kernels.op import WEIGHT_NAMES
from rja_kernels.testing import (
    emulated_cuda_backward,
    emulated_cuda_forward,
    low_precision_tolerance,
    make_inputs,
)

GRAD_NAMES = ("xa", "xv", *WEIGHT_NAMES)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _weights(inputs):
    return tuple(inputs[n] for n in WEIGHT_NAMES)


def _check(name, got, ref_low, ref_exact, factor):
    tol = low_precision_tolerance(ref_low, ref_exact, factor=factor)
    err = (got.double() - ref_exact).abs().max().item() if got.numel() else 0.0
    assert got.dtype == ref_low.dtype and got.shape == ref_exact.shape, name
    assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g}"


def check_against_reference(b, seq, da, dv, k, iterations, tw, dtype, **config):
    inputs = make_inputs(b, seq, da, dv, k, iterations, tw=tw, dtype=dtype, seed=iterations * 10 + tw)
    exact = {n: t.double() for n, t in inputs.items()}
    gen = torch.Generator().manual_seed(1)
    grad_out = [torch.randn(t.shape, generator=gen) for t in (exact["xa"], exact["xv"])]

    # fp32 kernels sum in another order than the reference: allow a few times its own fp32 error.
    factor = 4.0 if dtype == torch.float32 else 2.0
    ref_low = reference.forward(inputs["xa"], inputs["xv"], _weights(inputs), iterations)
    ref_exact = reference.forward(exact["xa"], exact["xv"], _weights(exact), iterations)
    got = emulated_cuda_forward(inputs["xa"], inputs["xv"], _weights(inputs), iterations, **config)
    for name, g, lo, ex in zip(("xa_out", "xv_out", "xa_iters", "xv_iters"), got, ref_low, ref_exact):
        _check(name, g, lo, ex, factor)

    # Every backward gets the same inputs (in the dtype), so the comparison measures arithmetic
    # error only, not the rounding of the saved features, which dominates in bfloat16.
    grad_low = [g.to(dtype) for g in grad_out]
    saved = (ref_low[2], ref_low[3])
    grads_low = reference.backward(*grad_low, *saved, _weights(inputs))
    grads_exact = reference.backward(*(t.double() for t in (*grad_low, *saved)), _weights(exact))
    grads = emulated_cuda_backward(*grad_low, *saved, _weights(inputs), **config)
    assert len(grads) == len(GRAD_NAMES)
    for name, g, lo, ex in zip(GRAD_NAMES, grads, grads_low, grads_exact):
        _check(f"grad {name}", g, lo, ex, factor)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_odd_sizes(iterations, shared, dtype):
    check_against_reference(2, 5, 24, 40, 12, iterations, 1 if shared else iterations, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_single_sample(dtype):
    check_against_reference(1, 7, 16, 9, 5, 2, 2, dtype)


@pytest.mark.parametrize(
    "config",
    [
        {"threads": 40, "rows": 7, "cols": 5},  # partial warp, tiles that divide nothing
        {"threads": 96, "rows": 64, "cols": 128},  # one tile covers every row and feature
        {"threads": 256, "rows": 32, "cols": 64},  # the GPU's launch shape
    ],
    ids=["ragged", "single-tile", "gpu-config"],
)
def test_launch_shapes(config):
    check_against_reference(2, 6, 24, 40, 12, 2, 2, torch.float32, **config)


def test_empty_batch():
    inputs = make_inputs(0, 5, 24, 40, 12, 2)
    xa_out, xv_out, xa_iters, xv_iters = emulated_cuda_forward(inputs["xa"], inputs["xv"], _weights(inputs), 2)
    assert xa_out.shape == (0, 5, 24) and xv_out.shape == (0, 5, 40)
    assert xa_iters.shape == (2, 0, 5, 24) and xv_iters.shape == (2, 0, 5, 40)
    grads = emulated_cuda_backward(xa_out, xv_out, xa_iters, xv_iters, _weights(inputs))
    assert grads[0].shape == (0, 5, 24)
    for g, name in zip(grads[2:], WEIGHT_NAMES):
        assert torch.equal(g, torch.zeros_like(inputs[name])), name


def test_shared_memory_limit_is_reported():
    # L = 160, k = 160: the weight tiles alone exceed the 227 KiB a block may have.
    inputs = make_inputs(1, 160, 8, 8, 160, 1)
    with pytest.raises(RuntimeError, match="bytes of shared memory per block for L=160, k=160"):
        emulated_cuda_forward(inputs["xa"], inputs["xv"], _weights(inputs), 1)
