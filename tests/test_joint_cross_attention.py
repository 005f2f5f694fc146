"""The JCA operator (SPEC section 2) on every backend: the shared checks of operator_checks.py,
plus its own argument rules."""

import pytest
from operator_checks import *  # noqa: F403  (the shared checks run for this operator)
from operator_checks import bad_weight_shape
from spec_loops import jca_loop


@pytest.fixture
def operator():
    return "joint_cross_attention"


@pytest.fixture
def options():
    return {}


@pytest.fixture
def spec_loop():
    return jca_loop


@pytest.mark.parametrize(("name", "shape", "match"), [
    ("w_ja", (2, 3, 3), r"w_ja must have shape \[Tw, L, L\] = \[2, 4, 4\]"),
    ("w_jv", (2, 4, 5), r"w_jv must have shape \[Tw, L, L\]"),
    ("w_v", (2, 2, 4), r"w_v must have shape \[Tw, k, L\] = \[2, 3, 4\]"),
    ("w_ca", (2, 3, 10), r"w_ca must have shape \[Tw, k, da \+ dv\] = \[2, 3, 11\]"),
    ("w_cv", (2, 4, 11), r"w_cv must have shape \[Tw, k, da \+ dv\]"),
    ("w_ha", (2, 4, 2), r"w_ha must have shape \[Tw, L, k\] = \[2, 4, 3\]"),
    ("w_hv", (1, 4, 3), r"w_hv must have shape \[Tw, L, k\] = \[2, 4, 3\]"),
    ("w_a", (3, 3, 4), r"Tw = 1 \(shared\) or Tw = iterations = 2 sets, got Tw = 3 in w_a"),
    ("w_a", (2, 0, 4), r"k \(w_a.shape\[1\]\) must be >= 1"),
])
def test_bad_weight_shape(name, shape, match):
    bad_weight_shape("joint_cross_attention", name, shape, match)


def test_tw_must_match_iterations():
    bad_weight_shape("joint_cross_attention", None, None, r"Tw = 1 .* or Tw = iterations = 3", iterations=3, tw=2)
