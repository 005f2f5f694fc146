"""The fusion modules of rja_models.fusion: each form against an independent oracle, on every
backend; the authors' released block against a re-implementation written from their code's
equations; old (JCA-form) checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from spec_loops import jca_loop, paper_loop

import rja_kernels
from rja_models.checkpoint import FORMAT_VERSION, model_from_checkpoint, save_checkpoint
from rja_models.config import ModelConfig
from rja_models.fusion import JointCrossAttention, RecursiveJointAttention, ReleasedJointAttention
from rja_models.model import RJAModel

FORMS = {
    "rja": (lambda backend, shared: RecursiveJointAttention(5, 24, 40, 2, shared, True, True, backend), paper_loop,
            {"h_tanh": True, "out_relu": True}),
    "jca": (lambda backend, shared: JointCrossAttention(5, 24, 40, 8, 2, shared, backend), jca_loop, {}),
}
OPERATOR = {"rja": "recursive_joint_attention", "jca": "joint_cross_attention"}


@pytest.mark.parametrize(("form", "backend"), [
    (form, backend) for form in FORMS for backend in rja_kernels.available_backends("cpu", operator=OPERATOR[form])])
@pytest.mark.parametrize("shared", [False, True])
def test_fusion_module_matches_spec_on_every_backend(form, backend, shared):
    build, spec_loop, options = FORMS[form]
    torch.manual_seed(0)
    module = build(backend, shared)
    xa, xv = torch.randn(3, 5, 24, requires_grad=True), torch.randn(3, 5, 40, requires_grad=True)
    out_a, out_v = module(xa, xv)
    weights = {n: getattr(module, n) for n in module.weight_names}
    expect_a, expect_v = spec_loop({"xa": xa, "xv": xv, **weights}, 2, **options)
    torch.testing.assert_close(out_a.double(), expect_a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_v.double(), expect_v, rtol=1e-4, atol=1e-4)
    # Gradients against autograd of the plain reference (not the backend's own backward).
    (out_a.sin().sum() + out_v.cos().sum()).backward()
    params = [xa, xv, *weights.values()]
    exact = [t.detach().double().requires_grad_() for t in params]
    ref_a, ref_v = getattr(rja_kernels, f"{OPERATOR[form]}_reference")(*exact, iterations=2, **options)
    expect = torch.autograd.grad(ref_a.sin().sum() + ref_v.cos().sum(), exact)
    for t, e in zip(params, expect):
        torch.testing.assert_close(t.grad.double(), e, rtol=1e-4, atol=1e-4)


def test_fusion_module_runs_under_autocast():
    fusion = RecursiveJointAttention(clips=4, da=16, dv=8, iterations=2)
    xa = torch.randn(2, 4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_a, out_v = fusion(xa, torch.randn(2, 4, 8))
    assert out_a.dtype == out_v.dtype == torch.bfloat16
    (out_a.float().sum() + out_v.float().sum()).backward()
    assert fusion.w_ca.grad.dtype == xa.grad.dtype == torch.float32


def test_fusion_weights_are_xavier_per_iteration():
    torch.manual_seed(0)
    fusion = RecursiveJointAttention(clips=16, da=512, dv=512, iterations=3)
    assert fusion.w_ha.shape == (3, 1024, 512)
    bound = (6 / (1024 + 512)) ** 0.5
    for w in fusion.w_ha:
        assert w.abs().max() <= bound and w.std() > bound / 2


def released_oracle(block: ReleasedJointAttention, xa: torch.Tensor, xv: torch.Tensor):
    """The released block written out per sample from their dense_coattn.py / av_crossatten.py
    equations (no dropout: eval mode), reading the module's parameters by role."""
    outs = []
    for b in range(xa.shape[0]):
        a, v = xa[b].double(), xv[b].double()
        for layer in block.layers:
            p = {n: t.detach().double() for n, t in layer.named_parameters()}
            joint = torch.cat([a, v], 1) @ p["joint.weight"].T + p["joint.bias"]
            new = []
            for m, x in (("a", a), ("v", v)):
                key = x.T @ p[f"key.{m}.weight"].T + p[f"key.{m}.bias"]  # Linear over the clips of x^T
                scores = torch.tanh(key @ joint / math.sqrt(joint.shape[1]))
                value = x @ p[f"value.{m}.weight"].T + p[f"value.{m}.bias"]
                weighted = torch.tanh(value @ scores).clamp(min=0)
                new.append(x + (weighted @ p[f"out.{m}.weight"].T + p[f"out.{m}.bias"]).clamp(min=0))
            a, v = new
        outs.append((a, v))
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def test_released_block_matches_its_equations():
    torch.manual_seed(0)
    block = ReleasedJointAttention(clips=5, da=6, dv=7, iterations=2, dropout=0.6).eval()
    for p in block.parameters():  # non-zero biases everywhere
        torch.nn.init.normal_(p, std=0.3)
    xa, xv = torch.randn(3, 5, 6), torch.randn(3, 5, 7)
    for got, expect in zip(block(xa, xv), released_oracle(block, xa, xv)):
        torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-5)
    block.train()
    torch.manual_seed(1)
    assert not torch.equal(block(xa, xv)[0], block(xa, xv)[0])  # dropout is active in training


def test_released_block_reduces_to_the_papers_operator():
    # SPEC's note: identity J projection, zero biases, no dropout -> the paper's form with both switches.
    torch.manual_seed(0)
    block = ReleasedJointAttention(clips=4, da=6, dv=5, iterations=2).double().eval()
    with torch.no_grad():
        for layer in block.layers:
            layer.joint.weight.copy_(torch.eye(11))
            for name, p in layer.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
    xa, xv = torch.randn(2, 4, 6, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    w = {"w_ja": "key.a", "w_jv": "key.v", "w_ca": "value.a", "w_cv": "value.v", "w_ha": "out.a", "w_hv": "out.v"}
    weights = {n: torch.stack([layer.get_submodule(m).weight.T for layer in block.layers]) for n, m in w.items()}
    expect = rja_kernels.recursive_joint_attention(xa, xv, **weights, iterations=2, h_tanh=True, out_relu=True)
    for got, e in zip(block(xa, xv), expect):
        torch.testing.assert_close(got, e, rtol=1e-12, atol=1e-12)


def test_released_fusion_in_the_model():
    model = RJAModel(ModelConfig(fusion="released", clips=3, use_backbones=False, da=16, dv=8, lstm_hidden=8))
    out = model(xa=torch.randn(2, 3, 16), xv=torch.randn(2, 3, 8))
    out["clip"].sum().backward()
    assert isinstance(model.fusion, ReleasedJointAttention)
    with pytest.raises(ValueError, match="shared_weights needs fusion='rja' or 'jca'"):
        ModelConfig(fusion="released", shared_weights=True)


def test_old_jca_checkpoint_loads_as_jca_and_says_so(tmp_path, capsys):
    config = ModelConfig(fusion="jca", clips=3, use_backbones=False, da=16, dv=8, lstm_hidden=8)
    model = RJAModel(config).eval()
    save_checkpoint(tmp_path / "new.pt", model)
    # What rja 0.1 wrote: format version 1, and "rja" named the JCA form.
    old = torch.load(tmp_path / "new.pt", weights_only=True)
    old["format_version"], old["config"]["fusion"] = 1, "rja"
    torch.save(old, tmp_path / "old.pt")
    loaded, loaded_config, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert loaded_config.fusion == "jca" and FORMAT_VERSION == 2
    assert "loading it as fusion='jca'" in capsys.readouterr().err
    xa, xv = torch.randn(2, 3, 16), torch.randn(2, 3, 8)
    torch.testing.assert_close(loaded(xa=xa, xv=xv)["clip"], model(xa=xa, xv=xv)["clip"])
    model_from_checkpoint(tmp_path / "new.pt")
    assert capsys.readouterr().err == ""  # a current checkpoint loads without a note
