"""The loss family in plain PyTorch, as a user would write it: the ground truth for the tests
and the baseline for the benchmarks. Same signatures and conventions as engine.losses."""
import torch


def _acc(logits):
    return logits if logits.dtype == torch.float64 else logits.float()


def _reduce(per_sample, weight, reduction):
    if weight is not None:
        per_sample = per_sample * weight.detach().to(per_sample.dtype)
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total if reduction == "sum" else total / max(per_sample.shape[0], 1)


def log1m_softmax(z):
    """log(1 - softmax(z)) for every class, without cancellation when p -> 1."""
    lse = torch.logsumexp(z, 1, keepdim=True)
    top = z.argmax(1, keepdim=True)
    # log1p(-p) is accurate for every class but the arg-max (p <= 1/2 there); the arg-max
    # column is zeroed first so that its log1p(-1) = -inf cannot leak NaN into the gradient.
    log1m = torch.log1p(-torch.exp(z - lse).scatter(1, top, 0.0))
    others = z.scatter(1, top, float("-inf"))
    # 1 - p of the arg-max is the others' mass; where all of them are -inf it is 0 (log -inf),
    # and the logsumexp runs on zeros there, whose gradient is 0, not the NaN of exp(-inf + inf).
    some = (others != float("-inf")).any(1, keepdim=True)
    top_value = torch.logsumexp(torch.where(some, others, 0.0), 1, keepdim=True) - lse
    return log1m.scatter(1, top, torch.where(some, top_value, float("-inf")))


def nl_loss(logits, comp_labels, *, weight=None, plus=False, reduction="mean", clamp_eps=None):
    if comp_labels.dim() == 1:
        comp_labels = comp_labels.unsqueeze(1)
    log1m = log1m_softmax(_acc(logits)).gather(1, comp_labels)
    one_minus_p = torch.exp(log1m)
    if clamp_eps is not None:
        log1m = one_minus_p.clamp(min=clamp_eps).log()
    a = one_minus_p.detach() if plus else torch.ones_like(log1m)
    return _reduce(-(a * log1m).sum(1), weight, reduction)


def nl_plus_loss(logits, comp_labels, *, weight=None, reduction="mean", clamp_eps=None):
    return nl_loss(logits, comp_labels, weight=weight, plus=True, reduction=reduction, clamp_eps=clamp_eps)


def pl_plus_loss(logits, target, *, n=3, weight=None, reduction="mean"):
    log_p = torch.log_softmax(_acc(logits), 1).gather(1, target.unsqueeze(1)).squeeze(1)
    p = log_p.detach().exp()
    factor = torch.ones_like(p)
    for i in range(n + 1):
        factor = factor * (1 + p ** (2**i))
    return _reduce(-factor * log_p, weight, reduction)


def _multi_negative(z, labels, exclude):
    negatives = torch.ones_like(z, dtype=torch.bool).scatter(1, labels.unsqueeze(1), False)
    if exclude is not None:
        negatives = negatives & ~exclude
    # where, not a product: a class of p = 1 outside the negatives has log(1 - p) = -inf
    return -torch.where(negatives, log1m_softmax(z), 0.0).sum(1)


def ml_loss(logits, labels, exclude=None, *, weight=None, reduction="mean"):
    return _reduce(_multi_negative(_acc(logits), labels, exclude), weight, reduction)


def pm_loss(logits, labels, exclude=None, *, weight=None, reduction="mean"):
    z = _acc(logits)
    ce = -torch.log_softmax(z, 1).gather(1, labels.unsqueeze(1)).squeeze(1)
    return _reduce(ce + _multi_negative(z, labels, exclude), weight, reduction)


def weighted_ce(logits, labels, *, weight=None, reduction="mean"):
    ce = torch.nn.functional.cross_entropy(_acc(logits), labels, reduction="none")
    return _reduce(ce, weight, reduction)


def jnpl_candidates(logits):
    """(candidate mask, yhat, p_yhat) of JNPL, arXiv:2104.06574, Alg. 1 before the Bernoulli draw."""
    p = torch.softmax(_acc(logits), 1)
    top = p.topk(2, dim=1)
    return top.values[:, 1] < 1.0 / logits.shape[1], logits.argmax(1), top.values[:, 0]


def normalize_weights(x, mode, temperature=10.0):
    x = _acc(x)
    if mode == "sub_min":
        return x - x.min()
    if mode == "min_max":
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else torch.ones_like(x)
    if mode == "max":
        return x / x.max() if x.max() > 0 else torch.ones_like(x)
    if mode == "rectify_sum":
        r = x.clamp(min=0)
        return r / r.sum() if r.sum() > 0 else torch.zeros_like(x)
    if mode == "sigmoid":
        return torch.sigmoid(x)
    if mode == "softmax":
        return torch.softmax(x / temperature, 0)
    raise ValueError(mode)


def update_history(history, indices, logits):
    history[indices, logits.argmax(1)] = True
    return history
