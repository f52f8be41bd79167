"""Properties of the preference losses (papers.md 1.10 and 2.5), and parity with TRL's sigmoid DPO loss."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from prefdata.train.losses import LOSS_TYPES, preference_loss, preference_metrics


def _batch(seed: int = 0, b: int = 16):
    g = torch.Generator().manual_seed(seed)
    lengths_c = torch.randint(5, 60, (b,), generator=g)
    lengths_r = torch.randint(5, 60, (b,), generator=g)
    pc = -lengths_c * (0.5 + torch.rand(b, generator=g, dtype=torch.float64))
    pr = -lengths_r * (0.5 + torch.rand(b, generator=g, dtype=torch.float64))
    rc = pc + torch.randn(b, generator=g, dtype=torch.float64)
    rr = pr + torch.randn(b, generator=g, dtype=torch.float64)
    return pc, pr, rc, rr, lengths_c, lengths_r


def test_aipo_reduces_to_dpo_and_dpo_nll():
    pc, pr, rc, rr, lc, lr = _batch()
    dpo = preference_loss("dpo", pc, pr, rc, rr, lc, lr, beta=0.1)
    aipo = preference_loss("aipo", pc, pr, rc, rr, lc, lr, beta=0.1, alpha=0.0, lambda_=0.0)
    torch.testing.assert_close(aipo, dpo, rtol=0, atol=1e-12)
    dpo_nll = preference_loss("dpo_nll", pc, pr, rc, rr, lc, lr, beta=0.1, lambda_=0.5)
    aipo_nll = preference_loss("aipo", pc, pr, rc, rr, lc, lr, beta=0.1, alpha=0.0, lambda_=0.5)
    torch.testing.assert_close(aipo_nll, dpo_nll, rtol=0, atol=1e-12)
    torch.testing.assert_close(dpo_nll - dpo, -0.5 * pc / lc, rtol=0, atol=1e-12)


def test_nll_gradient_is_minus_lambda_over_length():
    pc, pr, rc, rr, lc, lr = _batch(1)
    pc = pc.clone().requires_grad_(True)
    lam = 0.5
    with_nll = preference_loss("aipo", pc, pr, rc, rr, lc, lr, lambda_=lam).sum()
    (g_with,) = torch.autograd.grad(with_nll, pc)
    without = preference_loss("aipo", pc, pr, rc, rr, lc, lr, lambda_=0.0).sum()
    (g_without,) = torch.autograd.grad(without, pc)
    torch.testing.assert_close(g_with - g_without, -lam / lc.double(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("loss_type", ["aipo", "alpha_dpo", "dpo", "dpo_nll", "mrpo"])
def test_invariant_to_a_constant_added_to_both_references(loss_type):
    """(IPO's per-token log-ratios and BCR's budget on log π_ref(y_w) are, by design, not invariant.)"""
    pc, pr, rc, rr, lc, lr = _batch(2)
    base = preference_loss(loss_type, pc, pr, rc, rr, lc, lr)
    torch.testing.assert_close(base, preference_loss(loss_type, pc, pr, rc + 3.7, rr + 3.7, lc, lr), rtol=1e-12, atol=1e-12)


def test_aipo_is_not_invariant_to_a_constant_on_policy_chosen_alone():
    pc, pr, rc, rr, lc, lr = _batch(3)
    a = preference_loss("aipo", pc, pr, rc, rr, lc, lr)
    b = preference_loss("aipo", pc + 1.0, pr + 1.0, rc, rr, lc, lr)
    assert not torch.allclose(a, b)


def test_aipo_differs_from_alpha_dpo_when_lambda_positive():
    """Regression for the pre-Oct-2024 upstream bug where `aipo` silently dropped its NLL term."""
    pc, pr, rc, rr, lc, lr = _batch(4)
    aipo = preference_loss("aipo", pc, pr, rc, rr, lc, lr, alpha=0.09, lambda_=0.5)
    alpha_dpo = preference_loss("alpha_dpo", pc, pr, rc, rr, lc, lr, alpha=0.09)
    assert (aipo - alpha_dpo).abs().min() > 1e-3
    torch.testing.assert_close(preference_loss("aipo", pc, pr, rc, rr, lc, lr, alpha=0.09, lambda_=0.0), alpha_dpo)


def test_values_at_initialization():
    """π_θ = π_ref: DPO is log 2; α-DPO is softplus(αβ s_ref) (papers.md 1.10)."""
    _, _, rc, rr, lc, lr = _batch(5)
    dpo = preference_loss("dpo", rc, rr, rc, rr, lc, lr)
    torch.testing.assert_close(dpo, torch.full_like(dpo, math.log(2)), rtol=0, atol=1e-12)
    alpha, beta = 0.09, 0.1
    s_ref = rc - rr
    a = preference_loss("alpha_dpo", rc, rr, rc, rr, lc, lr, alpha=alpha, beta=beta)
    torch.testing.assert_close(a, F.softplus(alpha * beta * s_ref), rtol=0, atol=1e-12)
    assert torch.all((a > math.log(2)) == (s_ref > 0))
    # the initial gradient weight w_θ = σ(αβ s_ref) (Eq. 9): d loss / d s_θ = −β w_θ
    pc = rc.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(preference_loss("alpha_dpo", pc, rr, rc, rr, lc, lr, alpha=alpha, beta=beta).sum(), pc)
    torch.testing.assert_close(g, -beta * torch.sigmoid(alpha * beta * s_ref), rtol=0, atol=1e-12)


def test_mrpo_identical_references_equal_dpo():
    pc, pr, rc, rr, lc, lr = _batch(6)
    dpo = preference_loss("dpo", pc, pr, rc, rr, lc, lr)
    for k in (1, 2, 3):
        stacked_c, stacked_r = torch.stack([rc] * k), torch.stack([rr] * k)
        torch.testing.assert_close(preference_loss("mrpo", pc, pr, stacked_c, stacked_r, lc, lr), dpo)
        torch.testing.assert_close(preference_loss("mrpo", pc, pr, [rc] * k, [rr] * k, lc, lr), dpo)
    torch.testing.assert_close(preference_loss("mrpo", pc, pr, [rc, rc], [rr, rr], lc, lr, mrpo_weight_mapping="code"), dpo)


def test_mrpo_fixed_weights_and_clipping():
    """a=1 on the primary gives the primary; a=1 on the external gives the clipped external (papers.md 2.5)."""
    from prefdata.train.losses import _mrpo_reference

    pc, _, rc, rr, _, _ = _batch(7)
    ec, er = rc * 1.5, rr * 0.7  # an external reference far from the primary
    c, r = _mrpo_reference(pc, [rc, ec], [rr, er], 0.1, [1.0, 0.0], "margin")
    torch.testing.assert_close(c, rc)
    torch.testing.assert_close(r, rr)
    c, r = _mrpo_reference(pc, [rc, ec], [rr, er], 0.1, [0.0, 1.0], "margin")
    assert torch.all((c - rc).abs() <= 0.1 * rc.abs() + 1e-9)
    assert torch.all((r - rr).abs() <= 0.1 * rr.abs() + 1e-9)
    assert not torch.allclose(c, rc)


def test_mrpo_rejects_several_references_elsewhere():
    pc, pr, rc, rr, lc, lr = _batch(8)
    with pytest.raises(ValueError, match="only loss_type 'mrpo'"):
        preference_loss("dpo", pc, pr, [rc, rc], [rr, rr], lc, lr)
    with pytest.raises(ValueError, match="unknown loss_type"):
        preference_loss("nope", pc, pr, rc, rr, lc, lr)


def test_simpo_ipo_bcr_shapes_and_signs():
    pc, pr, rc, rr, lc, lr = _batch(9)
    for t in LOSS_TYPES:
        out = preference_loss(t, pc, pr, rc, rr, lc, lr)
        assert out.shape == pc.shape and torch.isfinite(out).all(), t
    # BCR: no penalty inside the budget, a linear one outside it
    dpo = preference_loss("dpo", pc, pr, rc, rr, lc, lr)
    inside = preference_loss("bcr", rc - 0.5, pr, rc, rr, lc, lr, bcr_budget=1.0, lambda_=0.5)
    torch.testing.assert_close(inside, preference_loss("dpo", rc - 0.5, pr, rc, rr, lc, lr))
    outside = preference_loss("bcr", rc - 3.0, pr, rc, rr, lc, lr, bcr_budget=1.0, lambda_=0.5)
    torch.testing.assert_close(outside - preference_loss("dpo", rc - 3.0, pr, rc, rr, lc, lr), torch.full_like(dpo, 1.0))
    # IPO is minimized where the per-token log-ratio gap equals 1/(2β)
    beta = 0.1
    at_min = preference_loss("ipo", rc + lc / (2 * beta), rr, rc, rr, lc, lr, beta=beta)
    torch.testing.assert_close(at_min, torch.zeros_like(at_min), rtol=0, atol=1e-9)
    # SimPO ignores the reference
    torch.testing.assert_close(
        preference_loss("simpo", pc, pr, rc, rr, lc, lr), preference_loss("simpo", pc, pr, rc * 0, rr * 0, lc, lr)
    )


def test_metrics():
    pc, pr, rc, rr, lc, lr = _batch(10)
    m = preference_metrics(pc, pr, rc, rr, lc, lr, beta=0.1)
    torch.testing.assert_close(m["rewards/margins"], 0.1 * ((pc - rc) - (pr - rr)))
    torch.testing.assert_close(m["margin/policy"] - m["margin/reference"], m["rewards/margins"])
    torch.testing.assert_close(m["nll"], -pc / lc)


def _trl_sigmoid_loss(pc, pr, rc, rr, lc, lr, beta):
    """Run TRL 1.x's own `DPOTrainer._compute_loss` on given summed log-probs.

    TRL computes the sigmoid loss inline in `_compute_loss` (there is no standalone loss function), from the
    per-token log-probs a fused LM head returns. A stub model returns per-token log-probs whose sum over the
    completion is the requested value; the references come in through the precomputed-reference path.
    """
    from accelerate import Accelerator
    from trl import DPOTrainer

    b = pc.shape[0]
    t = int(max(lc.max(), lr.max())) + 2
    completion_mask = torch.zeros(2 * b, t, dtype=torch.long)
    per_token = torch.zeros(2 * b, t - 1, dtype=pc.dtype)
    for i, (n, total) in enumerate(zip(torch.cat([lc, lr]).tolist(), torch.cat([pc, pr]).tolist(), strict=True)):
        completion_mask[i, 1 : 1 + n] = 1
        per_token[i, :n] = total / n

    class StubModel(torch.nn.Module):
        def forward(self, **kwargs):
            zeros = torch.zeros_like(per_token)
            return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None)

    trainer = DPOTrainer.__new__(DPOTrainer)
    trainer.model = StubModel().train()
    trainer.accelerator = Accelerator(cpu=True)
    trainer.precompute_ref_logps = True
    trainer.ld_alpha = None
    trainer.f_divergence_type = "reverse_kl"
    trainer.loss_types, trainer.loss_weights = ["sigmoid"], [1.0]
    trainer.beta = beta
    trainer.use_weighting = False
    trainer.aux_loss_enabled = False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    inputs = {
        "input_ids": torch.zeros(2 * b, t, dtype=torch.long),
        "attention_mask": torch.ones(2 * b, t, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": rc,
        "ref_rejected_logps": rr,
    }
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_parity_with_trl_sigmoid_dpo(beta):
    pc, pr, rc, rr, lc, lr = _batch(11)
    trl_loss, trl_metrics = _trl_sigmoid_loss(pc, pr, rc, rr, lc, lr, beta)
    ours = preference_loss("dpo", pc, pr, rc, rr, lc, lr, beta=beta).mean()
    torch.testing.assert_close(ours, trl_loss, rtol=1e-10, atol=1e-10)
    m = preference_metrics(pc, pr, rc, rr, lc, lr, beta=beta)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert m[key].mean().item() == pytest.approx(trl_metrics[key][0], rel=1e-9), key
    # and aipo with alpha = lambda = 0 is that same TRL loss
    aipo = preference_loss("aipo", pc, pr, rc, rr, lc, lr, beta=beta, alpha=0.0, lambda_=0.0).mean()
    torch.testing.assert_close(aipo, trl_loss, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- MRPO against the official K=2 code (papers.md 2.2, 2.5)


def _worked_example():
    """Policy −45/−65, external reference −40/−70, primary reference −50/−60 (chosen/rejected), β 0.1, ε 0.1."""
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    ones = torch.ones(1)
    return t(-45.0), t(-65.0), [t(-50.0), t(-40.0)], [t(-60.0), t(-70.0)], ones, ones


def test_mrpo_code_mapping_reproduces_the_official_worked_example():
    """Regression (issue 9 item 1): the weights came from the CLIPPED margins (a = 0.609, loss 0.405370).

    By hand, in the code's order: Δ1 = 30, Δ2 = 10, a = 30/(40 + 1e-6) = 0.75; s = 45/110, ε_w = 0.0409,
    ε_l = 0.0591; clipped external −47.9545 / −63.5455; L̃ = l1' + l2 − log(a e^{l1'} + (1−a) e^{l2}).
    """
    from prefdata.train.losses import _mrpo_reference, multi_dpo_loss

    pc, pr, rc, rr, lc, lr = _worked_example()
    loss = preference_loss("mrpo", pc, pr, rc, rr, lc, lr, beta=0.1, mrpo_eta=0.1, mrpo_weight_mapping="code")
    assert loss.item() == pytest.approx(0.386475, abs=5e-7)
    assert multi_dpo_loss(pc, pr, rc, rr, beta=0.1, mrpo_eta=0.1).item() == pytest.approx(0.450914, abs=5e-7)

    a, s = 30 / (40 + 1e-6), 45 / 110
    clip_w = min(max(-40.0, (1 + 0.1 * s) * -50.0), (1 - 0.1 * s) * -50.0)
    clip_l = min(max(-70.0, (1 + 0.1 * (1 - s)) * -60.0), (1 - 0.1 * (1 - s)) * -60.0)
    assert clip_w == pytest.approx(-47.954545, abs=1e-6) and clip_l == pytest.approx(-63.545455, abs=1e-6)
    c, r = _mrpo_reference(pc, rc, rr, 0.1, None, "code")
    for got, l1c, l2 in ((c, clip_w, -50.0), (r, clip_l, -60.0)):
        # the log-sum-exp form of the code, and the harmonic-mean identity −log(a/e^{l2} + (1−a)/e^{l1'})
        lse = l1c + l2 - math.log(a * math.exp(l1c) + (1 - a) * math.exp(l2))
        harmonic = -math.log(a / math.exp(l2) + (1 - a) / math.exp(l1c))
        assert got.item() == pytest.approx(lse, abs=1e-9) and lse == pytest.approx(harmonic, abs=1e-9)


def test_mrpo_margin_mapping_also_weighs_by_unclipped_margins():
    """"margin": the external reference weighs |Δ1| / (|Δ1| + |Δ2| + 1e-6) of the (clipped) harmonic mean."""
    from prefdata.train.losses import _mrpo_reference

    pc, _, rc, rr, _, _ = _worked_example()
    w_ext = 30 / (40 + 1e-6)
    c, r = _mrpo_reference(pc, rc, rr, 0.1, None, "margin")
    fixed_c, fixed_r = _mrpo_reference(pc, rc, rr, 0.1, [1 - w_ext, w_ext], "margin")
    torch.testing.assert_close(c, fixed_c, rtol=0, atol=1e-12)
    torch.testing.assert_close(r, fixed_r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mapping", ["code", "margin"])
def test_mrpo_properties(mapping):
    """papers.md 2.5 on random batches: identical references are DPO; a=1 is the primary, a=0 the clipped external;
    the harmonic-mean identity; |l1' − l2| ≤ ε|l2| after clipping."""
    from prefdata.train.losses import _mrpo_parts, _mrpo_reference

    pc, pr, rc, rr, lc, lr = _batch(12)
    dpo = preference_loss("dpo", pc, pr, rc, rr, lc, lr)
    same = preference_loss("mrpo", pc, pr, [rc, rc], [rr, rr], lc, lr, mrpo_weight_mapping=mapping)
    torch.testing.assert_close(same, dpo, rtol=0, atol=1e-12)

    ec, er = rc * 1.3 + 2.0, rr * 0.8 - 1.0  # an external reference far from the primary
    eta = 0.1
    clipped_c, clipped_r, w = _mrpo_parts([rc, ec], [rr, er], eta, None, mapping)
    assert torch.all((clipped_c[1] - rc).abs() <= eta * rc.abs() + 1e-9)
    assert torch.all((clipped_r[1] - rr).abs() <= eta * rr.abs() + 1e-9)
    torch.testing.assert_close(w.sum(0), torch.ones_like(pc), rtol=0, atol=1e-12)
    c, r = _mrpo_reference(pc, [rc, ec], [rr, er], eta, [1.0, 0.0], mapping)
    torch.testing.assert_close(c, rc, rtol=0, atol=1e-12)
    torch.testing.assert_close(r, rr, rtol=0, atol=1e-12)
    c, r = _mrpo_reference(pc, [rc, ec], [rr, er], eta, [0.0, 1.0], mapping)
    torch.testing.assert_close(c, clipped_c[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(r, clipped_r[1], rtol=0, atol=1e-12)
    c, _ = _mrpo_reference(pc, [rc, ec], [rr, er], eta, None, mapping)
    a = w[0]  # the weight of the primary reference
    lse = clipped_c[1] + rc - torch.log(a * torch.exp(clipped_c[1] - rc) + (1 - a)) - rc  # l1' + l2 − log(a e^{l1'} + (1−a) e^{l2})
    torch.testing.assert_close(c, lse, rtol=0, atol=1e-9)
    torch.testing.assert_close(c, -torch.log(a * torch.exp(-rc) + (1 - a) * torch.exp(-clipped_c[1])), rtol=1e-9, atol=1e-9)
