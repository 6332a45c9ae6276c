"""CCA / DPO / unlearning losses as pure functions of sequence log-probabilities.

Nothing here knows about models or trainers: the inputs are logits and token ids (``sequence_logprob``) or four
(B,) tensors of summed log-probs (``compute_loss``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("CCA", "DPO", "unlearning")

# elements of one fp32 working chunk (B * chunk_len * V); 1M floats = 4 MiB, small next to any real logits tensor
CHUNK_ELEMS = 1 << 20


def _chunk_len(logits: torch.Tensor) -> int:
    B, L, V = logits.shape
    return max(1, min(L, CHUNK_ELEMS // max(1, B * V)))


class _SequenceLogProb(torch.autograd.Function):
    """sum_t [logit[target_t] - logsumexp(logit_t)] per row, in float32, chunked over the sequence.

    Saves only the logits (already alive) and the (B, L) float32 logsumexp; the backward pass writes the gradient
    chunk by chunk, so no (B, L, V) float32 temporary ever exists beyond one chunk.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        B, L, V = logits.shape
        step = _chunk_len(logits)
        lse = torch.empty(B, L, dtype=torch.float32, device=logits.device)
        picked = torch.empty(B, L, dtype=torch.float32, device=logits.device)
        for s in range(0, L, step):
            chunk = logits[:, s:s + step].float()                       # (B, l, V) fp32
            lse[:, s:s + step] = torch.logsumexp(chunk, dim=-1)
            picked[:, s:s + step] = chunk.gather(-1, targets[:, s:s + step, None]).squeeze(-1)
        ctx.save_for_backward(logits, targets, lse)
        return (picked - lse).sum(dim=1)                                # (B,)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        B, L, V = logits.shape
        step = _chunk_len(logits)
        grad = torch.empty_like(logits)
        g = grad_out.float()[:, None, None]                             # (B, 1, 1)
        for s in range(0, L, step):
            rows = slice(s, s + step)
            # d/dlogits of (picked - lse) = onehot(target) - softmax, scaled by the incoming gradient
            if logits.dtype == torch.float32:
                out = grad[:, rows]                                     # write in place, no temporary
                torch.sub(logits[:, rows], lse[:, rows, None], out=out)
            else:
                out = logits[:, rows].float().sub_(lse[:, rows, None])  # (B, l, V) fp32
            out.exp_().mul_(-g)
            out.scatter_add_(-1, targets[:, rows, None], g.expand(-1, out.shape[1], 1).contiguous())
            if out.data_ptr() != grad[:, rows].data_ptr():
                grad[:, rows] = out
        return grad, None


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample sum over the sequence of log p(target): (B, L, V) logits, (B, L) int64 -> (B,) float32.

    Equal to ``log_softmax(logits.float(), -1).gather(-1, targets[..., None]).sum((1, 2))`` without ever building the
    full log-softmax; works for fp16 / bf16 logits (accumulated in float32).
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"sequence_logprob: expected logits (B, L, V) and targets (B, L), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    return _SequenceLogProb.apply(logits, targets.long())


def canonical_loss_type(loss_type: str) -> str:
    """The loss name as spelled in ``LOSS_TYPES`` (matched case-insensitively); ValueError listing them otherwise."""
    for name in LOSS_TYPES:
        if str(loss_type).lower() == name.lower():
            return name
    raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)} (case-insensitive)")


def is_separable(loss_type: str) -> bool:
    """True when the loss is a sum of a term of the positive rows and a term of the negative rows (CCA and
    unlearning, masked or not), so their gradients can be computed in two separate passes; DPO couples them."""
    return canonical_loss_type(loss_type) != "DPO"


def _nll_sigmoid(z: torch.Tensor) -> torch.Tensor:   # -log sigmoid(z)
    return -F.logsigmoid(z)


def _linear(z: torch.Tensor) -> torch.Tensor:        # the "unlearning" replacement of -log sigmoid(z)
    return -z


def _row_term(kind: str, beta: float):
    """The per-row penalty of CCA (-logσ(β·z)) or unlearning (-z)."""
    return (lambda z: _nll_sigmoid(beta * z)) if kind == "CCA" else _linear


def _loss_value(kind: str, d_pos: torch.Tensor, d_neg: torch.Tensor, beta: float, lambda_: float,
                neg_is_positive: torch.Tensor | None) -> torch.Tensor:
    if kind == "DPO":
        return _nll_sigmoid(beta * (d_pos - d_neg)).mean()
    term = _row_term(kind, beta)
    if neg_is_positive is None:
        return term(d_pos).mean() + lambda_ * term(-d_neg).mean()
    m = neg_is_positive.to(device=d_neg.device, dtype=torch.bool)
    sign = torch.where(m, 1.0, -1.0).to(d_neg)
    weight = torch.where(m, 1.0, float(lambda_)).to(d_neg)
    return (term(d_pos).mean() + (weight * term(sign * d_neg)).mean()) / max(float(lambda_), 1.0)


@torch.no_grad()
def _metrics(d_pos: torch.Tensor, d_neg: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"pref_acc": (d_pos > d_neg).float().mean(), "reward_margin": (d_pos - d_neg).mean(),
            "delta_pos": d_pos.mean(), "delta_neg": d_neg.mean()}


def _deltas(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp.float() - ref_logp.float()                             # (B,)


def compute_loss(loss_type: str, logp_pos: torch.Tensor, ref_logp_pos: torch.Tensor, logp_neg: torch.Tensor,
                 ref_logp_neg: torch.Tensor, *, beta: float, lambda_: float,
                 neg_is_positive: torch.Tensor | None = None,
                 null_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scalar loss and detached metrics from four (B,) sequence log-prob tensors.

    CCA:        mean(-logσ(β·Δpos)) + λ·mean(-logσ(-β·Δneg))
    with mask:  mean(-logσ(β·Δpos)) + mean(w·-logσ(s·β·Δneg)), (s, w) = (+1, 1) where masked else (-1, λ);
                total / max(λ, 1)
    DPO:        mean(-logσ(β·(Δpos - Δneg)))
    unlearning: CCA's two forms with -logσ(β·z) replaced by -z (β unused).
    ``neg_is_positive`` marks rows whose negative condition is really a positive one (null class, or a rolled
    label equal to the row's own label). ``null_rows`` (default: the mask) selects the rows averaged into the
    ``delta_neg_null`` metric, which is absent when no row is selected; pass CPU masks to avoid a device sync.
    """
    kind = canonical_loss_type(loss_type)
    d_pos, d_neg = _deltas(logp_pos, ref_logp_pos), _deltas(logp_neg, ref_logp_neg)
    loss = _loss_value(kind, d_pos, d_neg, beta, lambda_, neg_is_positive)
    metrics = _metrics(d_pos, d_neg)
    rows = null_rows if null_rows is not None else neg_is_positive
    if rows is not None and bool(rows.any()):
        metrics["delta_neg_null"] = d_neg.detach()[rows.to(device=d_neg.device, dtype=torch.bool)].mean()
    return loss, metrics


@dataclass(frozen=True)
class PreferenceLoss:
    """One loss with its settings, as the trainer uses it: the full loss with metrics whose keys never change
    (they are summed over micro-steps and ranks), and, for a separable loss, the positive-row term alone."""
    loss_type: str
    beta: float
    lambda_: float

    def __post_init__(self):
        object.__setattr__(self, "loss_type", canonical_loss_type(self.loss_type))

    @property
    def separable(self) -> bool:
        return self.loss_type != "DPO"

    def __call__(self, logp_pos: torch.Tensor, ref_logp_pos: torch.Tensor, logp_neg: torch.Tensor,
                 ref_logp_neg: torch.Tensor, neg_is_positive: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        d_pos, d_neg = _deltas(logp_pos, ref_logp_pos), _deltas(logp_neg, ref_logp_neg)
        return (_loss_value(self.loss_type, d_pos, d_neg, self.beta, self.lambda_, neg_is_positive),
                _metrics(d_pos, d_neg))

    def positive_term(self, logp_pos: torch.Tensor, ref_logp_pos: torch.Tensor,
                      neg_is_positive: torch.Tensor | None = None) -> torch.Tensor:
        """The loss's positive-row part: its gradient w.r.t. ``logp_pos`` is the full loss's (separable only)."""
        if not self.separable:
            raise ValueError(f"{self.loss_type} couples the positive and negative rows: no positive term alone")
        term = _row_term(self.loss_type, self.beta)(_deltas(logp_pos, ref_logp_pos)).mean()
        return term if neg_is_positive is None else term / max(float(self.lambda_), 1.0)
