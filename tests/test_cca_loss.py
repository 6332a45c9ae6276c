import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cca.conditions import make_conditions
from cca.loss import PreferenceLoss, compute_loss, sequence_logprob
from cca.parity import compute_fixture
from fixture_utils import FIXTURES, REPO, compare_with_expected


def naive_logprob(logits, targets):
    return F.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1).sum(-1)


def test_sequence_logprob_matches_naive_and_grad():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, requires_grad=True)
    targets = torch.randint(11, (3, 7), generator=g)
    ours = sequence_logprob(logits, targets)
    ref = naive_logprob(logits, targets)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    w = torch.randn(3, generator=g)
    (gr_ours,) = torch.autograd.grad((ours * w).sum(), logits)
    (gr_ref,) = torch.autograd.grad((ref * w).sum(), logits)
    torch.testing.assert_close(gr_ours, gr_ref, atol=1e-6, rtol=0)


def test_sequence_logprob_chunks_and_half_precision(monkeypatch):
    import cca.loss as L
    monkeypatch.setattr(L, "CHUNK_ELEMS", 40)          # forces several chunks along the sequence
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 9, 13, generator=g)
    targets = torch.randint(13, (2, 9), generator=g)
    torch.testing.assert_close(sequence_logprob(logits, targets), naive_logprob(logits, targets), atol=1e-5, rtol=0)
    for dt in (torch.float16, torch.bfloat16):
        half = logits.to(dt).requires_grad_(True)
        out = sequence_logprob(half, targets)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, naive_logprob(half.detach(), targets), atol=1e-4, rtol=0)
        out.sum().backward()
        assert half.grad.dtype == dt and torch.isfinite(half.grad.float()).all()


def test_sequence_logprob_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected logits"):
        sequence_logprob(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


def _deltas():
    lp = torch.tensor([-3.0, -5.0, -2.0, -4.0])
    rp = torch.tensor([-4.0, -5.5, -2.5, -3.0])
    ln = torch.tensor([-6.0, -5.0, -7.0, -1.0])
    rn = torch.tensor([-5.0, -6.0, -7.5, -2.0])
    return lp, rp, ln, rn


def test_loss_forms_by_hand():
    lp, rp, ln, rn = _deltas()
    dp, dn = lp - rp, ln - rn
    beta, lam = 0.5, 3.0
    sig = lambda z: 1 / (1 + math.exp(-z))
    nls = lambda z: -math.log(sig(z))
    exp_cca = sum(nls(beta * a) for a in dp.tolist()) / 4 + lam * sum(nls(-beta * b) for b in dn.tolist()) / 4
    got, metrics = compute_loss("cca", lp, rp, ln, rn, beta=beta, lambda_=lam)
    assert got.item() == pytest.approx(exp_cca, rel=1e-6)
    exp_dpo = sum(nls(beta * (a - b)) for a, b in zip(dp.tolist(), dn.tolist())) / 4
    assert compute_loss("DPO", lp, rp, ln, rn, beta=beta, lambda_=lam)[0].item() == pytest.approx(exp_dpo, rel=1e-6)
    exp_unl = -dp.mean().item() + lam * dn.mean().item()
    assert compute_loss("Unlearning", lp, rp, ln, rn, beta=beta, lambda_=lam)[0].item() == pytest.approx(exp_unl)
    # masked form: rows 1 and 3 count as positives in the second term
    m = torch.tensor([False, True, False, True])
    second = [(1.0 if mi else lam) * nls((1 if mi else -1) * beta * b) for mi, b in zip(m.tolist(), dn.tolist())]
    exp_m = (sum(nls(beta * a) for a in dp.tolist()) / 4 + sum(second) / 4) / max(lam, 1)
    got_m, met_m = compute_loss("CCA", lp, rp, ln, rn, beta=beta, lambda_=lam, neg_is_positive=m)
    assert got_m.item() == pytest.approx(exp_m, rel=1e-6)
    second_u = [(1.0 if mi else lam) * -((1 if mi else -1) * b) for mi, b in zip(m.tolist(), dn.tolist())]
    exp_um = (-dp.mean().item() + sum(second_u) / 4) / max(lam, 1)
    got_um, _ = compute_loss("unlearning", lp, rp, ln, rn, beta=beta, lambda_=lam, neg_is_positive=m)
    assert got_um.item() == pytest.approx(exp_um, rel=1e-6)
    # metrics
    assert metrics["pref_acc"].item() == pytest.approx((dp > dn).float().mean().item())
    assert metrics["reward_margin"].item() == pytest.approx((dp - dn).mean().item())
    assert "delta_neg_null" not in metrics
    assert met_m["delta_neg_null"].item() == pytest.approx(dn[m].mean().item())
    none = torch.zeros(4, dtype=torch.bool)
    assert "delta_neg_null" not in compute_loss("CCA", lp, rp, ln, rn, beta=beta, lambda_=lam,
                                                neg_is_positive=none)[1]


def test_unknown_loss_type_names_valid_ones():
    lp, rp, ln, rn = _deltas()
    with pytest.raises(ValueError, match="CCA, DPO, unlearning"):
        compute_loss("ipo", lp, rp, ln, rn, beta=1.0, lambda_=1.0)


def test_cca_loss_fixture_parity(tmp_path):
    out = tmp_path / "out.safetensors"
    subprocess.run([sys.executable, "-m", "cca.parity", str(FIXTURES / "cca_loss"), "--out", str(out)],
                   check=True, cwd=REPO)
    compare_with_expected(FIXTURES / "cca_loss", load_file(str(out)))


def test_cca_loss_fixture_distinguishes_wrong_forms():
    """Guard against a tolerant comparison: our own CCA (log-sigmoid) differs from the original LlamaGen value."""
    produced = compute_fixture(FIXTURES / "cca_loss")
    exp = load_file(str(FIXTURES / "cca_loss" / "expected.safetensors"))
    inp = load_file(str(FIXTURES / "cca_loss" / "inputs.safetensors"))
    ours, _ = compute_loss("CCA", produced["logp_policy_pos"], produced["logp_ref_pos"], produced["logp_policy_neg"],
                           produced["logp_ref_neg"], beta=0.02, lambda_=50.0)
    assert abs(ours.item() - exp["loss_llamagen_CCA_nouncond_h0"].item()) > 1.0
    assert abs(ours.item() - exp["loss_var_CCA_nouncond_h0"].item()) < 1e-3
    assert inp["labels"].shape[0] == 8


def test_conditions_roll_and_mask():
    labels = torch.tensor([3, 3, 7, 1, 7, 7, 2, 5])
    c0 = make_conditions(labels, 10, 0.0)
    assert c0.neg.tolist() == [3, 7, 1, 7, 7, 2, 5, 3] and c0.neg_is_positive is None
    draws = torch.tensor([0.5, 0.5, 0.05, 0.5, 0.5, 0.5, 0.5, 0.05])
    c = make_conditions(labels, 10, 0.1, uniform_draws=draws)
    assert c.pos.tolist() == [3, 3, 10, 1, 7, 7, 2, 10]
    assert c.neg.tolist() == [3, 7, 10, 7, 7, 2, 5, 10]
    assert c.neg_is_positive.tolist() == [True, False, True, False, True, False, False, True]
    assert c.null_rows.tolist() == [False, False, True, False, False, False, False, True]
    sub = c.select(slice(4, 8))
    assert sub.pos.tolist() == [7, 7, 2, 10] and sub.neg_is_positive.tolist() == [True, False, False, True]
    with pytest.raises(ValueError):
        make_conditions(labels[None], 10)


@pytest.mark.parametrize("loss_type", ["CCA", "unlearning"])
@pytest.mark.parametrize("masked", [False, True])
def test_positive_term_carries_the_full_losses_gradient_and_metrics_keep_their_keys(loss_type, masked):
    lp, rp, ln, rn = _deltas()
    mask = torch.tensor([False, True, False, True]) if masked else None
    loss = PreferenceLoss(loss_type.lower(), beta=0.5, lambda_=3.0)
    assert loss.loss_type == loss_type and loss.separable and not PreferenceLoss("dpo", 0.5, 3.0).separable
    pos = lp.clone().requires_grad_(True)
    full, metrics = loss(pos, rp, ln, rn, mask)
    (want,) = torch.autograd.grad(full, pos)
    pos2 = lp.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(loss.positive_term(pos2, rp, mask), pos2)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert set(metrics) == {"pref_acc", "reward_margin", "delta_pos", "delta_neg"}     # no mask-dependent keys
    torch.testing.assert_close(full, compute_loss(loss_type, lp, rp, ln, rn, beta=0.5, lambda_=3.0,
                                                  neg_is_positive=mask)[0])
    with pytest.raises(ValueError, match="couples"):
        PreferenceLoss("DPO", 0.5, 3.0).positive_term(pos2, rp)
