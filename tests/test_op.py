"""The torch.library custom op: opcheck, fake tensors and torch.compile(fullgraph=True)."""

import pytest
import torch

import rja_kernels
from rja_kernels.testing import make_inputs


class Fusion(torch.nn.Module):
    def __init__(self, backend: str, iterations: int = 2):
        super().__init__()
        self.backend, self.iterations = backend, iterations

    def forward(self, inp: dict) -> torch.Tensor:
        xa, xv = rja_kernels.recursive_joint_attention(**inp, iterations=self.iterations, backend=self.backend)
        return torch.cat([xa, xv], dim=-1).relu()


def opcheck_backend(backend: str, device: str = "cpu", dtype=torch.float64):
    for shared in (False, True):
        inp = make_inputs(2, 4, 6, 5, 3, 2, tw=1 if shared else None, dtype=dtype, device=device,
                          requires_grad=True)
        torch.library.opcheck(torch.ops.rja.recursive_joint_attention.default,
                              (*inp.values(), 2, backend))


def compile_matches_eager(backend: str, device: str = "cpu", dtype=torch.float32):
    inp = make_inputs(2, 5, 6, 7, 3, 2, dtype=dtype, device=device, requires_grad=True)
    module = Fusion(backend)
    eager = module(inp)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)(inp)
    torch.testing.assert_close(compiled, eager)
    grads_eager = torch.autograd.grad(eager.square().sum(), list(inp.values()))
    grads_compiled = torch.autograd.grad(compiled.square().sum(), list(inp.values()))
    for g, e in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(g, e)


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
