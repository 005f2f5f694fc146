"""The paper's operator (SPEC section 1) on every backend: the shared checks of operator_checks.py
with both switches, plus its own argument rules."""

import pytest
from operator_checks import *  # noqa: F403  (the shared checks run for this operator)
from operator_checks import bad_weight_shape
from spec_loops import paper_loop

SWITCHES = [{}, {"h_tanh": True}, {"out_relu": True}, {"h_tanh": True, "out_relu": True}]


@pytest.fixture
def operator():
    return "recursive_joint_attention"


@pytest.fixture(params=SWITCHES, ids=lambda o: "+".join(o) or "plain")
def options(request):
    return request.param


@pytest.fixture
def spec_loop():
    return paper_loop


@pytest.mark.parametrize(("name", "shape", "match"), [
    ("w_ja", (2, 3, 3), r"w_ja must have shape \[Tw, L, L\] = \[2, 4, 4\]"),
    ("w_jv", (2, 4, 5), r"w_jv must have shape \[Tw, L, L\]"),
    ("w_ca", (2, 6, 5), r"w_ca must have shape \[Tw, da, da\] = \[2, 6, 6\]"),
    ("w_cv", (2, 6, 6), r"w_cv must have shape \[Tw, dv, dv\] = \[2, 5, 5\]"),
    ("w_ha", (2, 11, 5), r"w_ha must have shape \[Tw, da \+ dv, da\] = \[2, 11, 6\]"),
    ("w_hv", (1, 11, 5), r"w_hv must have shape \[Tw, da \+ dv, dv\] = \[2, 11, 5\]"),
    ("w_ja", (3, 4, 4), r"Tw = 1 \(shared\) or Tw = iterations = 2 sets, got Tw = 3 in w_ja"),
])
def test_bad_weight_shape(name, shape, match):
    bad_weight_shape("recursive_joint_attention", name, shape, match)


def test_tw_must_match_iterations():
    bad_weight_shape("recursive_joint_attention", None, None, r"Tw = 1 .* or Tw = iterations = 3", iterations=3, tw=2)


def test_switches_must_be_bools():
    import torch

    from rja_kernels.testing import call_operator, make_inputs

    inp = make_inputs("recursive_joint_attention", 2, 4, 6, 5, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="h_tanh must be a bool"):
        call_operator("recursive_joint_attention", inp, 2, "reference", h_tanh=1)
