"""Preference losses as pure functions of summed response log-probs.

Every function here works on per-example tensors of shape [B]: log π(y|x) summed over the response tokens, and
the response token counts |y|. They return per-example losses so the trainer (or a test) decides how to reduce.
Equation numbers refer to `../shared/research/papers.md` and the papers cited per branch:

- AIPO: Shen et al. 2024, https://huggingface.co/papers/2409.08845 (Eq. 4-11 of the ICLR 2025 version).
- DPO: Rafailov et al. 2023, https://huggingface.co/papers/2305.18290 (Eq. 7).
- IPO: Azar et al. 2023, https://huggingface.co/papers/2310.12036 (Eq. 17).
- SimPO: Meng et al. 2024, https://huggingface.co/papers/2405.14734 (Eq. 6).
- MRPO: Le et al. 2024, https://huggingface.co/papers/2405.16388 (read from the official code, see `_mrpo_reference`).
- BCR: Chen et al. 2024, https://huggingface.co/papers/2411.05875 (only the abstract is available: the form is inferred).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSS_TYPES = ("aipo", "alpha_dpo", "dpo", "dpo_nll", "ipo", "simpo", "bcr", "mrpo")
MRPO_WEIGHT_MAPPINGS = ("margin", "code")
REFERENCE_FREE = ("simpo",)  # loss types that never read the reference log-probs

RefLogps = torch.Tensor | Sequence[torch.Tensor]


def nll_term(policy_chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Length-normalized NLL of the chosen response, −log π_θ(y_w|x) / |y_w| (AIPO Eq. 10)."""
    return -policy_chosen_logps / chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)


def preference_loss(
    loss_type: str,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: RefLogps,
    ref_rejected_logps: RefLogps,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.09,
    lambda_: float = 0.5,
    simpo_gamma: float = 0.5,
    bcr_budget: float = 1.0,
    mrpo_eta: float = 0.1,
    mrpo_weights: Sequence[float] | None = None,
    mrpo_weight_mapping: str = "margin",
) -> torch.Tensor:
    """Per-example loss [B] of `loss_type`.

    Args:
        loss_type: one of `LOSS_TYPES`.
        policy_chosen_logps, policy_rejected_logps: log π_θ(y|x), summed over response tokens, shape [B].
        ref_chosen_logps, ref_rejected_logps: log π_ref(y|x), shape [B]; for `mrpo` a stacked [K, B] tensor or a
            list of K [B] tensors, reference 0 being the primary one (the starting policy).
        chosen_lengths, rejected_lengths: response token counts |y_w|, |y_l|, shape [B].
        beta: temperature β (all types). alpha: agreement coefficient α (`aipo`, `alpha_dpo`).
        lambda_: weight λ of the NLL term (`aipo`, `dpo_nll`) or of the budget penalty (`bcr`).
        simpo_gamma: SimPO target margin γ. bcr_budget: BCR budget δ in nats.
        mrpo_eta: MRPO clipping range ε (negative: a fixed ε = −mrpo_eta for both responses).
        mrpo_weights: fixed MRPO weights (one per reference, summing to 1); None means adaptive (ARWC).
        mrpo_weight_mapping: "margin" (weight of reference k ∝ |Δ_k|) or "code" (the official K=2 assignment).
    """
    pc, pr = policy_chosen_logps, policy_rejected_logps
    if loss_type == "mrpo":
        rc, rr = _mrpo_reference(pc, ref_chosen_logps, ref_rejected_logps, mrpo_eta, mrpo_weights, mrpo_weight_mapping)
    else:
        rc, rr = _single(ref_chosen_logps), _single(ref_rejected_logps)
    policy_margin = pc - pr  # s_θ
    ref_margin = rc - rr  # s_ref

    if loss_type == "aipo":
        # AIPO Eq. 11: −log σ(β s_θ − (1+α) β s_ref) − (λ/|y_w|) log π_θ(y_w|x)
        losses = -F.logsigmoid(beta * policy_margin - (1 + alpha) * beta * ref_margin)
        losses = losses + lambda_ * nll_term(pc, chosen_lengths)
    elif loss_type == "alpha_dpo":
        # AIPO Eq. 6: −log σ(β s_θ − (1+α) β s_ref), i.e. DPO with the dynamic target margin αβ s_ref (Eq. 7)
        losses = -F.logsigmoid(beta * policy_margin - (1 + alpha) * beta * ref_margin)
    elif loss_type == "dpo":
        # DPO Eq. 7 (AIPO Eq. 4/5): −log σ(β (s_θ − s_ref))
        losses = -F.logsigmoid(beta * (policy_margin - ref_margin))
    elif loss_type == "dpo_nll":
        # DPO+NLL (AIPO Table 7, the RPO-style baseline): DPO − (λ/|y_w|) log π_θ(y_w|x)
        losses = -F.logsigmoid(beta * (policy_margin - ref_margin)) + lambda_ * nll_term(pc, chosen_lengths)
    elif loss_type == "ipo":
        # IPO Eq. 17: (h − 1/(2β))², h = the log-ratio difference. As in TRL, the log-ratios are averaged per token
        # (summed log-ratios would make the squared loss scale with the response length).
        h = (pc - rc) / chosen_lengths.clamp(min=1) - (pr - rr) / rejected_lengths.clamp(min=1)
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "simpo":
        # SimPO Eq. 6 (AIPO Table 7): −log σ(β/|y_w| log π_θ(y_w|x) − β/|y_l| log π_θ(y_l|x) − γ); reference-free.
        # The paper's grid uses β ∈ {2, 3}, γ ∈ {0.5, 1}: set beta accordingly, the 0.1 default is for DPO-style types.
        logits = beta * pc / chosen_lengths.clamp(min=1) - beta * pr / rejected_lengths.clamp(min=1) - simpo_gamma
        losses = -F.logsigmoid(logits)
    elif loss_type == "bcr":
        # BCR, INFERRED form (papers.md 3.3 b; the paper's formula is not available):
        # DPO + λ · max(0, log π_ref(y_w|x) − log π_θ(y_w|x) − δ): the chosen likelihood may fall by up to δ nats
        # below the reference before the penalty applies (δ = 0 is a DPOP-style penalty outside the sigmoid).
        losses = -F.logsigmoid(beta * (policy_margin - ref_margin)) + lambda_ * torch.relu(rc - pc - bcr_budget)
    elif loss_type == "mrpo":
        # MRPO: DPO (sigmoid) against the aggregated reference log π̃_ref built by `_mrpo_reference`.
        losses = -F.logsigmoid(beta * (policy_margin - ref_margin))
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    return losses


def preference_metrics(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Per-example diagnostics (detached). Rewards are plain DPO rewards β(log π_θ − log π_ref): α does not enter."""
    pc, pr = policy_chosen_logps.detach(), policy_rejected_logps.detach()
    rc, rr = ref_chosen_logps.detach(), ref_rejected_logps.detach()
    chosen_rewards = beta * (pc - rc)
    rejected_rewards = beta * (pr - rr)
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "margin/policy": beta * (pc - pr),
        "margin/reference": beta * (rc - rr),
        "logps/chosen": pc,
        "logps/rejected": pr,
        "length/chosen": chosen_lengths.float(),
        "length/rejected": rejected_lengths.float(),
        "nll": nll_term(pc, chosen_lengths),
    }


def _single(ref: RefLogps) -> torch.Tensor:
    if isinstance(ref, torch.Tensor) and ref.dim() == 1:
        return ref
    stacked = torch.stack(list(ref)) if not isinstance(ref, torch.Tensor) else ref
    if stacked.dim() == 2 and stacked.shape[0] == 1:
        return stacked[0]
    raise ValueError("several reference log-probs were given; only loss_type 'mrpo' takes more than one reference")


def _stack(ref: RefLogps) -> torch.Tensor:
    stacked = ref if isinstance(ref, torch.Tensor) else torch.stack(list(ref))
    return stacked.unsqueeze(0) if stacked.dim() == 1 else stacked


def _mrpo_reference(
    policy_chosen_logps: torch.Tensor,
    ref_chosen_logps: RefLogps,
    ref_rejected_logps: RefLogps,
    eta: float,
    weights: Sequence[float] | None,
    mapping: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MRPO aggregated reference log π̃_ref(y_w|x), log π̃_ref(y_l|x) (papers.md 2.1-2.2).

    With K references l_0 (primary: the starting policy) and l_1..l_{K-1} (external), in the official code's order:
    - ARWC weights (mrpo_weights None), from the UNCLIPPED margins Δ_k = l_k(y_w) − l_k(y_l), per example:
      an external reference's share is |Δ_k| / (Σ_j |Δ_j| + 1e-6) and the primary takes the rest.
      Mapping "margin" (default): that share is the weight OF reference k (the paper's description, per secondary
      sources). Mapping "code" (K=2 only, the official code exactly): a = |Δ_1| / (|Δ_0| + |Δ_1| + 1e-6), computed
      from the external margin, weighs the primary reference and 1 − a the external one.
    - CTRO clipping, after the weights: each external l_k is clipped into [(1+ε)·l_0, (1−ε)·l_0] (a relative band
      around the primary; log-probs are ≤ 0), with ε_w = ε·s, ε_l = ε·(1−s), s = |b_w| / (|b_w| + |b_l|) and b the
      mean over references of the unclipped log-probs.
    - Aggregation, the weighted harmonic mean: log π̃(y) = −log Σ_k w_k exp(−l'_k(y)).
    Identical references give π̃ = π_ref (so MRPO reduces to DPO).
    """
    lc, lr, w = _mrpo_parts(ref_chosen_logps, ref_rejected_logps, eta, weights, mapping)
    log_w = torch.log(w.clamp(min=1e-30))
    return -torch.logsumexp(log_w - lc, dim=0), -torch.logsumexp(log_w - lr, dim=0)


def _mrpo_parts(
    ref_chosen_logps: RefLogps, ref_rejected_logps: RefLogps, eta: float, weights: Sequence[float] | None, mapping: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped reference log-probs [K, B] (chosen, rejected) and the per-reference weights [K, B] of `mapping`."""
    if mapping not in MRPO_WEIGHT_MAPPINGS:
        raise ValueError(f"unknown mrpo_weight_mapping {mapping!r}; choose one of {', '.join(MRPO_WEIGHT_MAPPINGS)}")
    lc, lr = _stack(ref_chosen_logps), _stack(ref_rejected_logps)  # [K, B]
    if lc.shape != lr.shape:
        raise ValueError(f"mrpo: chosen and rejected reference log-probs differ in shape: {lc.shape} vs {lr.shape}")
    k = lc.shape[0]
    if weights is None:
        margins = (lc - lr).abs()  # unclipped: the weights come before CTRO, as in the official code
        share = margins[1:] / (margins.sum(0, keepdim=True) + 1e-6)  # [K-1, B]
        if mapping == "code":
            if k != 2:
                raise ValueError("mrpo_weight_mapping 'code' is defined for exactly two references")
            w = torch.cat([share, 1 - share])  # a (from |Δ_1|) weighs the primary, 1 − a the external reference
        else:
            w = torch.cat([1 - share.sum(0, keepdim=True), share])
    else:
        if len(weights) != k:
            raise ValueError(f"mrpo_weights has {len(weights)} values for {k} references")
        w = torch.as_tensor(list(weights), dtype=lc.dtype, device=lc.device).unsqueeze(1).expand_as(lc)
    if eta < 0:
        eps_w = eps_l = torch.full_like(lc[0], -eta)
    else:
        b_w, b_l = lc.mean(0).abs(), lr.mean(0).abs()
        s = b_w / (b_w + b_l).clamp(min=1e-12)
        eps_w, eps_l = eta * s, eta * (1 - s)
    lc = torch.cat([lc[:1], _clip(lc[1:], lc[0], eps_w)])
    lr = torch.cat([lr[:1], _clip(lr[1:], lr[0], eps_l)])
    return lc, lr, w


def multi_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: RefLogps,
    ref_rejected_logps: RefLogps,
    *,
    beta: float = 0.1,
    mrpo_eta: float = 0.1,
    mrpo_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """The multi-DPO baseline of the MRPO code (`--mref_naive`): Σ_k w_k · DPO(π; l'_k), per example [B].

    One DPO loss per (CTRO-clipped) reference, weighted by that reference's own margin share (with K=2:
    a · DPO(clipped external) + (1 − a) · DPO(primary), a = |Δ_1| / (|Δ_0| + |Δ_1| + 1e-6)).
    """
    lc, lr, w = _mrpo_parts(ref_chosen_logps, ref_rejected_logps, mrpo_eta, mrpo_weights, "margin")
    policy_margin = policy_chosen_logps - policy_rejected_logps
    per_ref = -F.logsigmoid(beta * (policy_margin.unsqueeze(0) - (lc - lr)))  # [K, B]
    return (w * per_ref).sum(0)


def _clip(ext: torch.Tensor, primary: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """CTRO: min(max(l_k, (1+ε)·l_0), (1−ε)·l_0), elementwise over [K-1, B]."""
    return torch.minimum(torch.maximum(ext, (1 + eps) * primary), (1 - eps) * primary)
