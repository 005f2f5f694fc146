"""The "cuda" backend's kernels (csrc/cuda) on CPU tensors, through the public operators, executed by
the host CUDA emulator (RJA_CUDA_EMULATE=1): both forms against the reference, outputs and every
gradient, the backward getting its own forward's saved features through autograd. This is CI's
proof of the CUDA kernels; tests/test_cuda_gpu.py repeats the comparison on a GPU where there is one.

Accuracy rule: error against the float64 reference, on the same (dtype-rounded) inputs, at most
`factor` times the error of the reference computed in the dtype, plus the rounding of the exact
result to the dtype (`low_precision_tolerance`). Outputs and saved iteration features are compared
with the reference's forward, gradients with the reference's analytic backward evaluated on the
kernel's own saved features, so the comparison measures arithmetic, not where an ulp of an input or
an iterate moves a relu kink.

The emulated launch shape (`cuda.EMULATED_CONFIG`: 64 threads, tiles of 16 rows and 48 features)
is smaller than the sizes below, so every tiled loop takes several tiles and a ragged last one. Its
tiles are multiples of 16, so float16 and bfloat16 run both forms' forwards on (emulated) tensor
cores with 16-bit operands and their backwards by 3xTF32, as on the GPU, and so does float32 both
ways where TF32 is allowed (`tf32_allowed`; by default float32 stays on CUDA cores); other launch
shapes run them on CUDA cores.
"""

import pytest
import torch

from rja_kernels import cuda
from rja_kernels.backends import BackendUnavailableError, get_backend
from rja_kernels.testing import (
    allow_tf32,
    assert_near_reordered_sum,
    call_operator,
    low_precision_tolerance,
    make_inputs,
)

PAPER, JCA = "recursive_joint_attention", "joint_cross_attention"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LOW_DTYPES = [torch.float16, torch.bfloat16]
SWITCHES = [{}, {"h_tanh": True}, {"out_relu": True}, {"h_tanh": True, "out_relu": True}]


@pytest.fixture(autouse=True)
def _emulate(monkeypatch):
    # Set here too, so these tests run the emulator on machines with a GPU as well.
    monkeypatch.setenv(cuda.EMULATE_ENV, "1")


def _switch_id(options):
    return "+".join(options) or "plain"


def _forward_and_grads(operator, inp, iterations, options, grads_out):
    inp = {n: t.detach().clone().requires_grad_() for n, t in inp.items()}
    out = call_operator(operator, inp, iterations, "cuda", **options)
    return [*out, *torch.autograd.grad(out, list(inp.values()), grads_out)]


def _within_rule(name, got, ref_low, exact, factor):
    assert got.dtype == ref_low.dtype and got.shape == exact.shape, name
    tol = low_precision_tolerance(ref_low, exact, factor=factor)
    err = (got.double() - exact).abs().max().item() if got.numel() else 0.0
    assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g}"


def check(operator, b, seq, da, dv, iterations, tw, dtype, k=None, options=None, config=None, seed=0):
    """The cuda backend (emulated) through the public op and autograd against the reference.

    The gradients are compared with the reference's backward evaluated on the kernel's own saved
    features, the ones autograd hands its backward: in float16/bfloat16 two forwards' iterates
    differ by an ulp here and there, which can move a relu kink and is no measure of the backward."""
    options = {"h_tanh": False, "out_relu": False, **(options or {})} if operator == PAPER else {}
    inp = make_inputs(operator, b, seq, da, dv, iterations, k=k, tw=tw, dtype=dtype, seed=seed)
    weights = tuple(t for n, t in inp.items() if n.startswith("w_"))
    gen = torch.Generator().manual_seed(seed + 1)
    grads_out = [torch.randn(inp[n].shape, generator=gen, dtype=torch.float64).to(dtype) for n in ("xa", "xv")]
    reference = get_backend(operator, "reference")
    kernel = get_backend(operator, "cuda")
    with cuda.emulated_config(**(config or {})):
        got = _forward_and_grads(operator, inp, iterations, options, grads_out)
        saved = kernel.forward(inp["xa"], inp["xv"], weights, iterations, **options)
    # In float32 a kernel thread sums each dot product sequentially, BLAS in blocks: measured up to
    # about 3x the reference's own float32 error over 144 random cases, so allow 6x.
    factor = 6.0 if dtype == torch.float32 else 2.0

    def double(ts):
        return tuple(t.double() for t in ts)

    ref_low = reference.forward(inp["xa"], inp["xv"], weights, iterations, **options)
    exact = reference.forward(inp["xa"].double(), inp["xv"].double(), double(weights), iterations, **options)
    for name, g, lo, ex in zip(("xa_out", "xv_out", "xa_iters", "xv_iters"), (*got[:2], *saved[2:]), ref_low, exact):
        _within_rule(name, g, lo, ex, factor)
    grads_low = reference.backward(*grads_out, *saved[2:], weights, **options)
    grads_exact = reference.backward(*double((*grads_out, *saved[2:])), double(weights), **options)
    names = [f"grad {n}" for n in inp]
    assert len(got) == 2 + len(names)
    for name, g, lo, ex in zip(names, got[2:], grads_low, grads_exact):
        _within_rule(name, g, lo, ex, factor)


# ---- the paper's form ------------------------------------------------------------------------------

@pytest.mark.parametrize("options", SWITCHES, ids=_switch_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paper_odd_sizes(dtype, options):
    # d = 64: two column tiles (48, 16); da = 24: two row tiles, dv = 40: three, ragged.
    check(PAPER, 2, 5, 24, 40, 2, 2, dtype, options=options)


@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_paper_iterations_and_shared_weights(iterations, shared):
    # da = 13 fits one row tile (its C stays staged between the backward's passes), dv = 29 does not.
    for options in ({}, {"h_tanh": True, "out_relu": True}):
        check(PAPER, 3, 6, 13, 29, iterations, 1 if shared else iterations, torch.float32, options=options)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paper_single_clip(dtype):
    check(PAPER, 2, 1, 9, 20, 2, 1, dtype, options={"out_relu": True})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_paper_low_precision_shared_weights(dtype):
    check(PAPER, 1, 7, 16, 9, 3, 1, dtype, options={"h_tanh": True})


LAUNCH_SHAPES = [
    {"threads": 40, "rows": 7, "cols": 5},  # partial warp, tiles that divide nothing
    {"threads": 96, "rows": 64, "cols": 128},  # one tile covers every row and feature
    {"threads": 256, "rows": 32, "cols": 64},  # the GPU's launch shape
]
LAUNCH_IDS = ["ragged", "single-tile", "gpu-config"]


@pytest.mark.parametrize("config", LAUNCH_SHAPES, ids=LAUNCH_IDS)
def test_paper_launch_shapes(config):
    check(PAPER, 2, 6, 24, 40, 2, 2, torch.float32, options={"h_tanh": True}, config=config)
    check(PAPER, 1, 6, 24, 40, 2, 1, torch.float32, options={"out_relu": True}, config=config)


TENSOR_CORE_SHAPES = [
    {"threads": 40, "rows": 16, "cols": 16},  # a partial warp, which sits the mma out; many tiles
    {"threads": 96, "rows": 64, "cols": 128},  # one tile covers every row and feature
    {"threads": 256, "rows": 32, "cols": 64},  # the GPU's launch shape
]


@pytest.mark.parametrize("config", TENSOR_CORE_SHAPES, ids=["partial-warp", "single-tile", "gpu-config"])
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_paper_tensor_core_launch_shapes(dtype, config):
    # L = 20 pads to 32 (two mma tiles, the second ragged); d = 42, da = 13, dv = 29: ragged tiles.
    check(PAPER, 2, 20, 13, 29, 2, 2, dtype, options={"h_tanh": True, "out_relu": True}, config=config)


@pytest.mark.parametrize("config", TENSOR_CORE_SHAPES, ids=["partial-warp", "single-tile", "gpu-config"])
@pytest.mark.parametrize(("operator", "options"), [(PAPER, {}), (PAPER, {"h_tanh": True, "out_relu": True}),
                                                   (JCA, None)], ids=["paper", "paper-released-switches", "jca"])
def test_float32_with_tf32_allowed_meets_the_rule(operator, options, config, tf32_allowed):
    # float32 by 3xTF32 both ways, held to the rule of every float32 case here.
    check(operator, 2, 20, 13, 29, 2, 2, torch.float32, k=20 if operator == JCA else None, options=options,
          config=config)


def _mma_calls(run):
    before = cuda.cuda_emulator().wmma_mma_count()
    run()
    return cuda.cuda_emulator().wmma_mma_count() - before


def _mma_calls_of_the_passes(operator, inp, iterations, **options):
    """mma_sync calls of the emulated forward of `operator` on `inp`, and of its backward on the
    forward's saved features (the forward's outputs as their gradients)."""
    forward, backward, _ = KERNELS[operator]
    weights = tuple(t for n, t in inp.items() if n.startswith("w_"))
    saved = []
    forward_calls = _mma_calls(lambda: saved.extend(forward(inp["xa"], inp["xv"], weights, iterations, **options)))
    return forward_calls, _mma_calls(lambda: backward(*saved, weights, **options))


def _mma_f32(m, n, k, exact_operand):
    """mma_sync calls per lane of mma_tiles_f32 on an [m, n] product over k: 3 per m16n16k8 step, 2
    where an operand is exact in tf32 (holds 16-bit values)."""
    return m // 16 * (n // 16) * (k // 8) * (2 if exact_operand else 3)


def _mma_16(m, n, k):
    """mma_sync calls per lane of mma_tiles (16-bit operands) on an [m, n] product over k."""
    return m // 16 * (n // 16) * (k // 16)


def _ceil(a, b):
    return -(-a // b)


def _paper_update_mma_calls(lp, dm, rows, cols, tf32x3, exact):
    """mma_sync calls per lane of paper.cuh's update pass for one column tile of `cols` features and
    one modality of dm rows: per row tile C = tanh(P J) and G += Q C, then U += H w_h in chunks of
    w_h's columns (`cols` of them with 16-bit operands, `rows` by 3xTF32, where J and w_h are
    `exact` for 16-bit inputs)."""
    row_tiles = _ceil(dm, rows)
    if not tf32x3:
        return (row_tiles * (_mma_16(rows, cols, lp) + _mma_16(lp, cols, rows))
                + _ceil(dm, cols) * _mma_16(lp, cols, cols))
    return row_tiles * (_mma_f32(rows, cols, lp, exact) + _mma_f32(lp, cols, rows, False)
                        + _mma_f32(lp, rows, cols, exact))


def _paper_forward_mma_calls(seq, da, dv, iterations, rows, cols, sixteen_bit):
    """mma_sync calls (summed over the lanes) of the paper forward: 16-bit products for 16-bit
    inputs, 3xTF32 for float32."""
    lp = _ceil(seq, 16) * 16
    per_tile = sum(_paper_update_mma_calls(lp, dm, rows, cols, not sixteen_bit, False) for dm in (da, dv))
    return 32 * iterations * _ceil(da + dv, cols) * per_tile


def _paper_backward_mma_calls(seq, da, dv, iterations, rows, cols, out_relu, sixteen_bit):
    """mma_sync calls (summed over the lanes) of the paper backward's 3xTF32 path at tiles of `rows`
    rows and `cols` features (paper.cuh's backward_column_tile): per column tile and modality the
    first pass's C and G += Q C per row tile, gG = gU w_h^T in chunks of `rows`, and per row tile
    Q^T gG, gG C^T, gS J^T, gJ += P^T gS (and C again where there are several row tiles); with
    out_relu also the recomputed U (the forward's update pass); per modality dx's two products with
    the weights. Operands holding the inputs' values (J, w_h, w_c, w_j) are exact in tf32 for 16-bit
    inputs only."""
    lp, x = _ceil(seq, 16) * 16, sixteen_bit
    correlation, g = _mma_f32(rows, cols, lp, x), _mma_f32(lp, cols, rows, False)
    gradients = (_mma_f32(rows, cols, lp, False) + _mma_f32(lp, rows, cols, False) + _mma_f32(rows, lp, cols, x)
                 + _mma_f32(lp, cols, rows, False))
    per_tile = dx = 0
    for dm in (da, dv):
        row_tiles = _ceil(dm, rows)
        per_tile += row_tiles * (correlation + g) + row_tiles * _mma_f32(lp, cols, rows, x) + row_tiles * gradients
        per_tile += row_tiles * correlation if row_tiles > 1 else 0
        per_tile += _paper_update_mma_calls(lp, dm, rows, cols, True, x) if out_relu else 0
        # dx += dQ w_c^T + w_j dP^T in chunks of `cols` columns, each over chunks of `rows` of k
        dx += _ceil(dm, cols) * (row_tiles + _ceil(seq, rows)) * _mma_f32(lp, cols, rows, x)
    return 32 * iterations * (_ceil(da + dv, cols) * per_tile + dx)


@pytest.mark.parametrize("options", [{}, {"out_relu": True}], ids=_switch_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paper_tensor_cores_take_every_pass(dtype, options):
    # At tiles of multiples of 16 the float16/bfloat16 forward runs on 16-bit tensor cores and their
    # backward by 3xTF32, and with TF32 allowed the float32 passes too (by 3xTF32), each with the
    # expected count of products; without, float32 stays on CUDA cores, whatever the flag does to
    # 16-bit inputs (none); tiles that are no multiples of 16 stay on CUDA cores (and meet the rule).
    inp = make_inputs(PAPER, 1, 6, 13, 29, 2, dtype=dtype)
    config, sixteen_bit = cuda.EMULATED_CONFIG, dtype != torch.float32
    for allowed in (True, False):
        with allow_tf32(allowed):
            forward, backward = _mma_calls_of_the_passes(PAPER, inp, 2, **options)
        if allowed or sixteen_bit:
            assert forward == _paper_forward_mma_calls(6, 13, 29, 2, config["rows"], config["cols"], sixteen_bit)
            assert backward == _paper_backward_mma_calls(6, 13, 29, 2, config["rows"], config["cols"],
                                                         "out_relu" in options, sixteen_bit)
        else:
            assert forward == backward == 0
    ragged = {"threads": 40, "rows": 7, "cols": 5}
    with allow_tf32():
        assert _mma_calls(lambda: check(PAPER, 1, 6, 13, 29, 2, 1, dtype, options=options, config=ragged)) == 0


def test_paper_shared_memory_limit_is_reported():
    # The tiles scale with L: at L = 1000 the forward's alone exceed the 227 KiB a block may have.
    inp = make_inputs(PAPER, 1, 1000, 4, 4, 1)
    with pytest.raises(RuntimeError, match="paper forward needs .* bytes of shared memory per block for L=1000"):
        call_operator(PAPER, inp, 1, "cuda")


# ---- the split across thread blocks (several blocks per sample, one cooperative launch) ----------------

@pytest.fixture
def emulated_device():
    """Sets the emulated device (SM count, blocks per SM) for the test; restores it after."""
    emu = cuda.cuda_emulator()
    saved = []

    def set_device(sms, per_sm):
        previous = emu.set_device(sms, per_sm)
        if not saved:
            saved.append(previous)

    yield set_device
    if saved:
        emu.set_device(*saved[0])


SPLITS = [1, 2, 3]
# d = 64 in tiles of 48: two column tiles (a third block has none); tiles of 5 features: 13, dealt
# unevenly among the blocks.
SPLIT_SHAPES = [None, {"threads": 40, "rows": 7, "cols": 5}]


def _split_runs(operator, inp, iterations, config, splits, options, grads_out=None):
    """Forward and backward of the emulated kernels of `operator`, once per entry of `splits`."""
    forward, backward = {PAPER: (cuda.paper_forward, cuda.paper_backward),
                         JCA: (cuda.jca_forward, cuda.jca_backward)}[operator]
    weights = tuple(t for n, t in inp.items() if n.startswith("w_"))
    runs = []
    for split in splits:
        with cuda.emulated_config(**{**config, "split": split}):
            saved = forward(inp["xa"], inp["xv"], weights, iterations, **options)
            grads = grads_out or saved[:2]
            runs.append((*saved, *backward(*grads, *saved[2:], weights, **options)))
    return runs


@pytest.mark.parametrize("config", SPLIT_SHAPES, ids=["default", "ragged"])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", [{}, {"h_tanh": True, "out_relu": True}], ids=_switch_id)
def test_paper_split_meets_the_rule_is_deterministic_and_near_one_block(dtype, split, config, options,
                                                                         emulated_device):
    # The forward and the backward, with `split` blocks per sample: (a) against the reference.
    emulated_device(8, 2)  # room for 3 samples x 3 blocks
    config = {**(config or {}), "split": split}
    check(PAPER, 3, 5, 24, 40, 2, 2, dtype, options=options, config=config)
    # (b) the same S twice gives the same bits: each block's partial sums and their sum in block
    # order do not depend on the schedule; (c) S > 1 is S = 1 up to the rounding of the sums' order.
    inp = make_inputs(PAPER, 3, 5, 24, 40, 2, dtype=dtype, seed=3)
    gen = torch.Generator().manual_seed(4)
    grads_out = [torch.randn(inp[n].shape, generator=gen).to(dtype) for n in ("xa", "xv")]
    one, many, again = _split_runs(PAPER, inp, 2, config, (1, split, split), options, grads_out)
    names = ["xa_out", "xv_out", "xa_iters", "xv_iters", *(f"grad {n}" for n in inp)]
    assert len(one) == len(names)
    tiles = -(-(24 + 40) // config.get("cols", cuda.EMULATED_CONFIG["cols"]))
    for name, a, b, c in zip(names, one, many, again):
        assert torch.equal(b, c), f"{name}: two runs with S = {split} differ"
        assert_near_reordered_sum(name, a, b, dtype, tiles)


def test_paper_heuristic_split_is_near_the_lone_blocks_result():
    # The default (split=0) on the default emulated device (4 SMs x 2 blocks) gives B = 2 at d = 42
    # (tiles of 48 features: one column tile) one block per sample, at tiles of 16 (three)
    # ceil(4 / 2) = 2.
    emu = cuda.cuda_emulator()
    assert emu.blocks_per_sm(64, 0) == 2
    assert emu.choose_split(2, 4, 2, 1) == 1 and emu.choose_split(2, 4, 2, 3) == 2
    inp = make_inputs(PAPER, 2, 6, 13, 29, 3)
    chosen, again, one = _split_runs(PAPER, inp, 3, {"cols": 16}, (0, 0, 1), {"out_relu": True})
    for a, b, c in zip(one, chosen, again):
        assert torch.equal(b, c)
        assert_near_reordered_sum("heuristic", a, b, torch.float32, 3)


@pytest.mark.parametrize(
    ("batch", "sms", "per_sm", "tiles", "expected"),
    [
        (64, 132, 1, 16, 2),  # the benchmark's B on an H100, one block per SM: 3 x 64 would not fit
        (64, 132, 2, 16, 3),  # ceil(132 / 64): every SM gets a block
        (64, 132, 4, 16, 3),  # room for more, but 3 already occupy every SM
        (50, 132, 1, 16, 2),  # rounded down: 3 x 50 blocks would not all be resident
        (50, 132, 2, 16, 3),
        (132, 132, 1, 16, 1),  # B fills the device
        (100, 132, 2, 16, 2),
        (500, 132, 4, 16, 1),
        (1, 132, 8, 16, 16),  # at most one block per column tile
        (1, 132, 1, 200, 132),
        (3, 132, 8, 2, 2),
        (3, 4, 2, 2, 2),
        (0, 132, 1, 16, 1),
    ],
)
def test_split_heuristic(batch, sms, per_sm, tiles, expected):
    assert cuda.cuda_emulator().choose_split(batch, sms, per_sm, tiles) == expected


@pytest.mark.parametrize(("batch", "split", "seq", "d"), [(64, 3, 16, 1024), (3, 2, 5, 64), (1, 13, 7, 42)])
def test_split_workspace_is_one_partial_sum_per_block(batch, split, seq, d):
    # The paper forward's partial sums of U: B S L d floats (12 MiB at the paper size on a 132-SM
    # GPU, S = 3); the paper backward's of U (then gQ) and gP, and the JCA backward's dJ (one per
    # iteration parity): twice that; the JCA forward keeps none. None for S = 1.
    emu = cuda.cuda_emulator()
    for sums in (0, 1, 2):
        assert emu.split_workspace_floats(batch, split, seq, d, sums) == sums * batch * split * seq * d
        assert emu.split_workspace_floats(batch, 1, seq, d, sums) == 0
    if (batch, split, seq, d) == (64, 3, 16, 1024):
        assert emu.split_workspace_floats(batch, split, seq, d, 1) * 4 == 12 * 2**20


def test_forced_split_beyond_the_resident_blocks_is_refused(emulated_device):
    emulated_device(2, 2)
    inp = make_inputs(PAPER, 3, 5, 24, 40, 1)
    with cuda.emulated_config(split=2), pytest.raises(
            RuntimeError, match=r"split=2 needs B \* split = 6 resident blocks; the device holds 2 SMs x 2 = 4"):
        call_operator(PAPER, inp, 1, "cuda")


def test_split_from_the_environment_overrides_the_config(emulated_device, monkeypatch):
    # RJA_CUDA_SPLIT (what a device session sets to time S = 1 against the heuristic's S) wins over
    # the launch config: forcing 2 where the config asks for 1 is refused the same way; a value
    # that is not a non-negative integer is an error, not a silent fallback.
    emulated_device(2, 2)
    inp = make_inputs(PAPER, 3, 5, 24, 40, 1)
    monkeypatch.setenv("RJA_CUDA_SPLIT", "2")
    with cuda.emulated_config(split=1), pytest.raises(RuntimeError, match=r"split=2 needs B \* split = 6"):
        call_operator(PAPER, inp, 1, "cuda")
    for bad in ("two", "-1", "2x"):
        monkeypatch.setenv("RJA_CUDA_SPLIT", bad)
        with pytest.raises(RuntimeError, match=f"RJA_CUDA_SPLIT must be a non-negative integer, got '{bad}'"):
            call_operator(PAPER, inp, 1, "cuda")
    monkeypatch.setenv("RJA_CUDA_SPLIT", "1")
    with cuda.emulated_config(split=2):  # 3 x 2 blocks, refused without the override
        call_operator(PAPER, inp, 1, "cuda")


# ---- the JCA form ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shared", [False, True], ids=["Tw=T", "Tw=1"])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_jca_odd_sizes(iterations, shared, dtype):
    check(JCA, 2, 5, 24, 40, iterations, 1 if shared else iterations, dtype, k=12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_jca_single_sample_and_clip(dtype):
    check(JCA, 1, 7, 16, 9, 2, 2, dtype, k=5)
    check(JCA, 2, 1, 9, 20, 2, 1, dtype, k=3)


@pytest.mark.parametrize("config", LAUNCH_SHAPES, ids=LAUNCH_IDS)
def test_jca_launch_shapes(config):
    check(JCA, 2, 6, 24, 40, 2, 2, torch.float32, k=12, config=config)


@pytest.mark.parametrize("config", TENSOR_CORE_SHAPES, ids=["partial-warp", "single-tile", "gpu-config"])
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_jca_tensor_core_launch_shapes(dtype, config):
    # L = 20 pads to 32 and k = 20 to 32 (two mma tiles each, the second ragged); d = 42, da = 13,
    # dv = 29: ragged row and column tiles.
    check(JCA, 2, 20, 13, 29, 2, 2, dtype, k=20, config=config)


def _jca_mma_calls(B, L, da, dv, k, T, R, E, sixteen_bit, backward):
    """mma_sync calls (per lane: 32 a warp's) of the JCA form's large contractions, per row tile,
    column tile and iteration of a sample, at L and k padded to 16: the forward's P J and
    Z += C w_c^T, with 16-bit operands for 16-bit inputs, else by 3xTF32; the backward's by 3xTF32,
    as mma_tiles_f32 counts them ((M / 16) (N / 16) (Kd / 8) steps of 3 products, 2 where one
    operand holds 16-bit inputs: J, w_c)."""
    Lp, kp = _ceil(L, 16) * 16, _ceil(k, 16) * 16
    x = 2 if sixteen_bit else 3

    def mma(M, N, Kd, products):
        return M // 16 * (N // 16) * (Kd // 8) * products

    if not backward:
        per_tile = _mma_16(R, E, Lp) + _mma_16(R, kp, E) if sixteen_bit else mma(R, E, Lp, 3) + mma(R, kp, E, 3)
    else:
        per_tile = (2 * mma(R, E, Lp, x)  # P J, in phase A and again in phase B
                    + mma(R, kp, E, x)  # Z += C w_c^T
                    + mma(R, E, kp, x)  # gZ w_c
                    + mma(kp, E, R, 3)  # grad w_c += gZ^T C
                    + mma(Lp, E, R, 3)  # gJ += P^T gS
                    + mma(R, Lp, E, x))  # gS J^T
    row_tiles, column_tiles = _ceil(da, R) + _ceil(dv, R), _ceil(da + dv, E)
    return 32 * per_tile * row_tiles * column_tiles * T * B


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_jca_tensor_cores_take_every_pass(dtype, split, emulated_device):
    # The forward of float16/bfloat16 at tiles of multiples of 16 runs on tensor cores with 16-bit
    # operands and their backward by 3xTF32, and with TF32 allowed both float32 passes by 3xTF32,
    # with any split, every row tile's once; without, float32 stays on CUDA cores; other tiles too.
    emulated_device(8, 2)  # room for 3 samples x 3 blocks
    inp = make_inputs(JCA, 3, 6, 13, 29, 2, k=12, dtype=dtype)
    rows, cols, sixteen_bit = cuda.EMULATED_CONFIG["rows"], cuda.EMULATED_CONFIG["cols"], dtype != torch.float32
    for allowed in (True, False):
        with cuda.emulated_config(split=split), allow_tf32(allowed):
            forward, backward = _mma_calls_of_the_passes(JCA, inp, 2)
        if allowed or sixteen_bit:
            assert forward == _jca_mma_calls(3, 6, 13, 29, 12, 2, rows, cols, sixteen_bit, backward=False)
            assert backward == _jca_mma_calls(3, 6, 13, 29, 12, 2, rows, cols, sixteen_bit, backward=True)
        else:
            assert forward == backward == 0
    ragged = {"threads": 40, "rows": 7, "cols": 5, "split": split}
    with allow_tf32():
        assert _mma_calls(lambda: check(JCA, 3, 6, 13, 29, 2, 1, dtype, k=12, config=ragged)) == 0


# The forward and backward of each form, and its inputs for the 16-bit check below: L = 20 pads to 32.
KERNELS = {
    PAPER: (cuda.paper_forward, cuda.paper_backward, {}),
    JCA: (cuda.jca_forward, cuda.jca_backward, {"k": 20}),
}


@pytest.mark.parametrize("config", [{}, TENSOR_CORE_SHAPES[1]], ids=["default", "single-tile"])
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("operator", [PAPER, JCA], ids=["paper", "jca"])
def test_16_bit_backward_is_the_float32_kernels_rounded(operator, dtype, config):
    # The 16-bit backward's 3xTF32 products are about float32's: on the same values its gradients
    # are the float32 kernel's rounded to the dtype, but where the two float32 results straddle a
    # rounding boundary (measured: at most 0.4% of the elements, by 0.2 eps max|grad|). The float32
    # kernel runs on CUDA cores here (tiles of 15 rows and 47 features), an oracle that shares no
    # exactness flag with the 16-bit one.
    # This sees what the accuracy rule cannot: an operand wrongly taken as exact in tf32 (rounded
    # to 11 bits, one product short): the JCA form's P in P J moves 33% of the elements in float16,
    # 8% in bfloat16; the paper form's Q in G += Q C 17% and 24% (13.7 eps max|grad| in bfloat16).
    forward, backward, sizes = KERNELS[operator]
    inp = make_inputs(operator, 2, 20, 13, 29, 2, dtype=dtype, seed=5, **sizes)
    weights = tuple(t for n, t in inp.items() if n.startswith("w_"))
    gen = torch.Generator().manual_seed(6)
    grads_out = [torch.randn(inp[n].shape, generator=gen).to(dtype) for n in ("xa", "xv")]
    with cuda.emulated_config(**config):
        saved = forward(inp["xa"], inp["xv"], weights, 2)
        low = backward(*grads_out, *saved[2:], weights)
    with cuda.emulated_config(rows=15, cols=47):
        f32 = backward(*(t.float() for t in (*grads_out, *saved[2:])), tuple(w.float() for w in weights))
    differ = 0
    for name, got, ref in zip((f"grad {n}" for n in inp), low, f32):
        rounded = ref.to(dtype)
        differ += (got != rounded).sum().item()
        err = (got.double() - rounded.double()).abs().max().item()
        assert err <= torch.finfo(dtype).eps * rounded.abs().max().item(), f"{name}: {err:.3g} from float32's"
    assert differ <= 0.02 * sum(g.numel() for g in low)


def test_jca_shared_memory_limit_is_reported():
    # L = 160, k = 160: the weight tiles alone exceed the 227 KiB a block may have.
    inp = make_inputs(JCA, 1, 160, 8, 8, 1, k=160)
    with pytest.raises(RuntimeError, match="bytes of shared memory per block for L=160, k=160"):
        call_operator(JCA, inp, 1, "cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("operator", "seq", "k"), [(PAPER, 200, None), (JCA, 100, 100)], ids=["paper", "jca"])
def test_backward_runs_on_cuda_cores_where_its_tensor_core_tiles_do_not_fit(operator, seq, k, dtype, tf32_allowed):
    # At these L (and k) the backward's tensor-core layout, padded to multiples of 16 at strides of
    # width + 4, exceeds the 227 KiB a block may have, and the CUDA-core layout fits: the backward
    # takes the CUDA cores (no mma) and meets the rule, where it used to refuse the size.
    inp = make_inputs(operator, 1, seq, 4, 4, 1, k=k, dtype=dtype)
    weights = tuple(t for n, t in inp.items() if n.startswith("w_"))
    forward, backward, _ = KERNELS[operator]
    saved = forward(inp["xa"], inp["xv"], weights, 1)
    assert _mma_calls(lambda: backward(saved[0], saved[1], saved[2], saved[3], weights)) == 0
    check(operator, 1, seq, 4, 4, 1, 1, dtype, k=k)


@pytest.mark.parametrize(("operator", "seq", "k"), [(PAPER, 360, None), (JCA, 113, 113)], ids=["paper", "jca"])
def test_float32_forward_runs_on_cuda_cores_where_its_tensor_core_tiles_do_not_fit(operator, seq, k, tf32_allowed):
    # With TF32 allowed, at the emulated tiles (16 x 48) the float32 forward's 3xTF32 layout exceeds
    # the 227 KiB a block may have at these L (and k), padded to 368 (128), and its CUDA-core layout
    # fits (the backward's does not): the forward takes the CUDA cores (no mma) and meets the rule.
    inp = make_inputs(operator, 1, seq, 4, 4, 1, k=k)
    weights = tuple(t for n, t in inp.items() if n.startswith("w_"))
    forward, _, _ = KERNELS[operator]
    reference = get_backend(operator, "reference")
    got = []
    assert _mma_calls(lambda: got.extend(forward(inp["xa"], inp["xv"], weights, 1))) == 0
    ref_low = reference.forward(inp["xa"], inp["xv"], weights, 1)
    exact = reference.forward(inp["xa"].double(), inp["xv"].double(), tuple(w.double() for w in weights), 1)
    for name, g, lo, ex in zip(("xa_out", "xv_out"), got, ref_low, exact):
        _within_rule(name, g, lo, ex, 6.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("operator", [PAPER, JCA], ids=["paper", "jca"])
def test_tensor_cores_off_by_the_environment(operator, dtype, monkeypatch, tf32_allowed):
    # RJA_CUDA_TENSOR_CORES=0 (what a device session sets to time CUDA cores against tensor cores)
    # keeps both passes off the tensor cores at tiles that would take them, within the rule; "1"
    # gives them back, and another value is an error, not a silent fallback.
    sizes = KERNELS[operator][2]
    inp = make_inputs(operator, 2, 20, 13, 29, 2, dtype=dtype, **sizes)
    monkeypatch.setenv("RJA_CUDA_TENSOR_CORES", "0")
    assert _mma_calls_of_the_passes(operator, inp, 2) == (0, 0)
    check(operator, 2, 20, 13, 29, 2, 2, dtype, **sizes)
    monkeypatch.setenv("RJA_CUDA_TENSOR_CORES", "1")
    assert min(_mma_calls_of_the_passes(operator, inp, 2)) > 0
    monkeypatch.setenv("RJA_CUDA_TENSOR_CORES", "no")
    with pytest.raises(RuntimeError, match="RJA_CUDA_TENSOR_CORES must be 0 or 1, got 'no'"):
        _mma_calls_of_the_passes(operator, inp, 2)


# The JCA form's split deals the row tiles of both modalities (the unit of its work) to the blocks
# in turn. da = 24, dv = 40 in tiles of 16 rows: 2 + 3; of 7 rows (and 5-feature column tiles): 4 +
# 6, here with the weights shared by the iterations; of 64 rows: 1 + 1, so at S = 2 each block has
# one modality's rows only and at S = 3 one block has no rows at all.
JCA_SPLIT_SHAPES = [({}, 3), ({"threads": 40, "rows": 7, "cols": 5}, 1), ({"rows": 64}, 3)]


@pytest.mark.parametrize(("config", "tw"), JCA_SPLIT_SHAPES, ids=["default", "ragged", "idle-block"])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_jca_split_meets_the_rule_is_deterministic_and_near_one_block(dtype, split, config, tw, emulated_device):
    # (a) With `split` blocks per sample against the reference; T = 3 reuses the backward's dJ
    # partials of iteration parity 0.
    emulated_device(8, 2)  # room for 3 samples x 3 blocks
    rows = config.get("rows", cuda.EMULATED_CONFIG["rows"])
    row_tiles = -(-24 // rows) + -(-40 // rows)
    config = {**config, "split": split}
    check(JCA, 3, 5, 24, 40, 3, tw, dtype, k=12, config=config)
    # (b) The same S twice gives the same bits; (c) the forward's row tiles are independent, so any
    # S gives S = 1's bits; the backward's sums over row tiles (dJ and the weight gradients: per
    # block, then added in block order) are S = 1's up to their order.
    inp = make_inputs(JCA, 3, 5, 24, 40, 3, k=12, tw=tw, dtype=dtype, seed=3)
    gen = torch.Generator().manual_seed(4)
    grads_out = [torch.randn(inp[n].shape, generator=gen).to(dtype) for n in ("xa", "xv")]
    one, many, again = _split_runs(JCA, inp, 3, config, (1, split, split), {}, grads_out)
    names = ["xa_out", "xv_out", "xa_iters", "xv_iters", *(f"grad {n}" for n in inp)]
    assert len(one) == len(names)
    for i, (name, a, b, c) in enumerate(zip(names, one, many, again)):
        assert torch.equal(b, c), f"{name}: two runs with S = {split} differ"
        if i < 4:
            assert torch.equal(a, b), f"{name}: the forward with S = {split} differs from S = 1"
        else:
            assert_near_reordered_sum(name, a, b, dtype, row_tiles)


def test_jca_heuristic_split_is_the_chosen_one():
    # On the default emulated device (4 SMs x 2 blocks) B = 2 at da = 13, dv = 29 (tiles of 16
    # rows: 1 + 2 row tiles) gets choose_split's ceil(4 / 2) = 2 blocks per sample: the same bits
    # as forcing 2, the forward's those of S = 1 and the backward's near them.
    assert cuda.cuda_emulator().choose_split(2, 4, 2, 3) == 2
    inp = make_inputs(JCA, 2, 6, 13, 29, 3, k=5)
    chosen, forced, one = _split_runs(JCA, inp, 3, {}, (0, 2, 1), {})
    for i, (a, b, c) in enumerate(zip(one, chosen, forced)):
        assert torch.equal(b, c)
        if i < 4:
            assert torch.equal(a, b)
        else:
            assert_near_reordered_sum("heuristic", a, b, torch.float32, 3)


def test_jca_forced_split_beyond_the_resident_blocks_is_refused(emulated_device, monkeypatch):
    # Forward and backward, forced by the config and, over it, by RJA_CUDA_SPLIT, as for the paper form.
    emulated_device(2, 2)
    inp = make_inputs(JCA, 3, 5, 24, 40, 1, k=4)
    weights = tuple(t for n, t in inp.items() if n.startswith("w_"))
    refused = r"split=2 needs B \* split = 6 resident blocks; the device holds 2 SMs x 2 = 4"
    with cuda.emulated_config(split=1):
        saved = cuda.jca_forward(inp["xa"], inp["xv"], weights, 1)
    with cuda.emulated_config(split=2), pytest.raises(RuntimeError, match=f"jca forward: {refused}"):
        cuda.jca_forward(inp["xa"], inp["xv"], weights, 1)
    monkeypatch.setenv("RJA_CUDA_SPLIT", "2")
    with cuda.emulated_config(split=1), pytest.raises(RuntimeError, match=f"jca backward: {refused}"):
        cuda.jca_backward(*saved, weights)
    monkeypatch.setenv("RJA_CUDA_SPLIT", "1")
    with cuda.emulated_config(split=2):  # 3 x 2 blocks, refused without the override
        call_operator(JCA, inp, 1, "cuda")


# ---- both forms ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_empty_batch(operator):
    inp = make_inputs(operator, 0, 5, 24, 40, 2, k=12, requires_grad=True)
    xa, xv = call_operator(operator, inp, 2, "cuda", **({"out_relu": True} if operator == PAPER else {}))
    assert xa.shape == (0, 5, 24) and xv.shape == (0, 5, 40)
    grads = torch.autograd.grad(xa.sum() + xv.sum(), list(inp.values()))
    for g, (name, t) in zip(grads, inp.items()):
        assert g.shape == t.shape and not g.any(), name


@pytest.mark.parametrize("operator", [PAPER, JCA])
def test_saved_features_are_the_iterations_inputs(operator):
    # The backend contract: xa_iters[i] is the input of iteration i; xa_iters[0] is xa itself.
    inp = make_inputs(operator, 2, 4, 10, 7, 3, k=4)
    weights = tuple(t for n, t in inp.items() if n.startswith("w_"))
    forward = cuda.paper_forward if operator == PAPER else cuda.jca_forward
    xa_out, xv_out, xa_iters, xv_iters = forward(inp["xa"], inp["xv"], weights, 3)
    assert torch.equal(xa_iters[0], inp["xa"]) and torch.equal(xv_iters[0], inp["xv"])
    one = forward(xa_iters[2], xv_iters[2], tuple(w[2:] for w in weights), 1)
    torch.testing.assert_close(one[0], xa_out)
    torch.testing.assert_close(one[1], xv_out)


def test_cpu_tensors_without_the_switch_are_refused_with_the_reason(monkeypatch):
    monkeypatch.delenv(cuda.EMULATE_ENV)
    inp = make_inputs(PAPER, 1, 4, 6, 5, 1)
    with pytest.raises(BackendUnavailableError, match=r"needs CUDA tensors.*RJA_CUDA_EMULATE=1"):
        call_operator(PAPER, inp, 1, "cuda")


def test_float64_is_refused_with_the_reason():
    inp = make_inputs(PAPER, 1, 4, 6, 5, 1, dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="float32, float16 and bfloat16"):
        call_operator(PAPER, inp, 1, "cuda")
