"""The torch.library custom op: opcheck, fake tensors and torch.compile(fullgraph=True)."""

import pytest

import rja_kernels
from rja_kernels.testing import compile_matches_eager, make_inputs, opcheck_backend


def test_opcheck_reference():
    opcheck_backend("reference")


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_compile_fullgraph(backend):
    compile_matches_eager(backend)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        inp = make_inputs(3, 4, 6, 5, 2, 3)
        xa, xv = rja_kernels.recursive_joint_attention(**inp, iterations=3, backend="reference")
    assert xa.shape == (3, 4, 6) and xv.shape == (3, 4, 5)
