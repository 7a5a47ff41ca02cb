"""Verification metrics over all same-class vs different-class pairs of one embedding set, exact and chunked.

A pair (i, j), i < j, is *positive* when both items share a label and *negative* otherwise; its distance is the
Euclidean distance of the (by default L2-normalised) embeddings. A threshold T declares a pair a **match** when
its distance is ≤ T, so

- ``FMR(T)``  = fraction of negative pairs with distance ≤ T (false match rate, the ROC's FPR),
- ``FNMR(T)`` = fraction of positive pairs with distance > T (false non-match rate, 1 − TPR).

``fnmr@fmr=q`` follows open-metric-learning's ``calc_fnmr_at_fmr``: T is ``numpy.quantile(negative distances, q)``
(linear interpolation) and the value is ``FNMR(T)`` (OML counts a positive at exactly T as a non-match too; the two
differ only on exact ties). ``eer`` is min over T of max(FMR(T), FNMR(T)), the smallest rate that one threshold
keeps both errors under; ``best_f1`` is the largest F1 of "match" over all thresholds; ``roc_auc`` is the
probability that a random negative pair is farther than a random positive one (ties count one half).

No N × N matrix is built: rows are processed in chunks that fit ``memory_budget``. Positive distances (Σ n_c²/2 of
them) are kept; negatives are only counted: against the sorted positive distances (ROC, EER, F1, AUC exactly), and
in histograms refined pass by pass until the few order statistics that the FMR quantiles need are collected and
sorted exactly. Typically two sweeps over the pairs; more only when a histogram bin is too crowded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .inputs import as_embeddings, as_labels
from .knn import DEFAULT_MEMORY_BUDGET

DEFAULT_FMRS = (1e-1, 1e-2, 1e-3, 1e-4)
DEFAULT_ROC_POINTS = 256
_BINS = 1 << 14
_MIN_COLLECT = 1 << 20  # a histogram bin with at most this many negatives (or budget / 64) is collected and sorted
_BYTES_PER_PAIR = 32  # distance block, masks, selected copies, float64 copy and search indices per pair of a chunk

PairBlocks = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def verification_metrics(
    embeddings,
    labels,
    *,
    fmrs: Sequence[float] = DEFAULT_FMRS,
    normalize: bool = True,
    max_pairs: int | None = None,
    seed: int = 0,
    roc_points: int = DEFAULT_ROC_POINTS,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    device: torch.device | str | None = None,
) -> dict:
    """Verification metrics of every pair (i < j) of ``embeddings`` (N × D) with integer ``labels`` (N).

    Args:
        fmrs: false match rates in (0, 1] at which to report ``fnmr@fmr=q`` and ``threshold@fmr=q``.
        normalize: L2-normalise before taking Euclidean distances (distances in [0, 2]).
        max_pairs: when the set has more than this many pairs, estimate from a seeded sample instead: every
            positive pair if they are at most half of ``max_pairs`` (else a uniform sample of half), and uniform
            negative pairs for the rest. None: always exact.
        seed: seed of that sample. roc_points: about how many (FPR, TPR) points the returned curve keeps.
        memory_budget: bytes of working memory per chunk of rows.
    Returns:
        ``{"roc_auc", "eer", "eer_threshold", "best_f1", "best_f1_threshold", "best_f1_precision",
        "best_f1_recall", "fnmr@fmr=q", "threshold@fmr=q" (each q), "num_positive_pairs", "num_negative_pairs",
        "sampled" (bool), "roc": {"fpr": [...], "tpr": [...], "thresholds": [...]}}``. Rates are NaN (with a
        warning) when there are no positive or no negative pairs. With sampling, the ``num_*`` counts are those
        of the sample, ``num_total_pairs`` gives the population, and F1 and its precision weigh the sampled pairs
        back to the population's positive / negative proportions.
    """
    fmrs = tuple(float(q) for q in fmrs)
    if not all(0.0 < q <= 1.0 for q in fmrs):
        raise ValueError(f"fmrs must lie in (0, 1], got {fmrs}")
    if max_pairs is not None and max_pairs < 2:
        raise ValueError(f"max_pairs must be at least 2, got {max_pairs}")
    x = as_embeddings(embeddings, "embeddings", device)
    y = as_labels(labels, "labels", x.shape[0]).to(x.device)
    if normalize:
        x = F.normalize(x, dim=1)
    n = x.shape[0]
    total = n * (n - 1) // 2
    _, counts = torch.unique(y, return_counts=True)
    n_pos = int((counts * (counts - 1) // 2).sum())
    sampled = max_pairs is not None and total > max_pairs
    if sampled:
        pos, neg = _sample_pairs(x, y, n_pos, total - n_pos, max_pairs, seed)
        # F1 mixes the two kinds of pairs: weigh the sample back to the population's proportions
        weights = (n_pos / max(pos.numel(), 1), (total - n_pos) / max(neg.numel(), 1))
        result = _metrics(lambda: iter([(pos, neg)]), _upper_bound(neg), fmrs, roc_points, memory_budget, weights)
        result["num_total_pairs"] = total
    else:
        rows = max(1, min(n, memory_budget // (_BYTES_PER_PAIR * max(n, 1))))
        result = _metrics(lambda: _exact_pair_blocks(x, y, rows), _upper_bound(x, pairwise=True), fmrs, roc_points,
                          memory_budget)  # fmt: skip
    result["sampled"] = sampled
    return result


def pair_rates_at(embeddings, labels, threshold: float, *, normalize: bool = True,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict[str, float]:  # fmt: skip
    """``{"fmr", "fnmr"}`` of every pair (i < j) at one distance ``threshold`` (a match: distance ≤ threshold),
    exact and chunked; NaN where there are no negative / positive pairs."""
    x = as_embeddings(embeddings, "embeddings")
    y = as_labels(labels, "labels", x.shape[0]).to(x.device)
    if normalize:
        x = F.normalize(x, dim=1)
    n = x.shape[0]
    rows = max(1, min(n, memory_budget // (_BYTES_PER_PAIR * max(n, 1))))
    pos = neg = pos_far = neg_near = 0
    for p, q in _exact_pair_blocks(x, y, rows):
        pos, neg = pos + p.numel(), neg + q.numel()
        pos_far += int((p > threshold).sum())
        neg_near += int((q <= threshold).sum())
    return {"fmr": neg_near / neg if neg else math.nan, "fnmr": pos_far / pos if pos else math.nan}


def _upper_bound(x: torch.Tensor, pairwise: bool = False) -> float:
    """A strict upper bound of every distance: 2 · max norm for pairs of rows, else the largest value, with slack."""
    if x.numel() == 0:
        return 1.0
    m = float(x.norm(dim=1).max()) * 2 if pairwise else float(x.max())
    return m * 1.01 + 1e-6


def _exact_pair_blocks(x: torch.Tensor, y: torch.Tensor, rows: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (positive, negative) distances of pairs i < j, rows ``a:b`` against columns ``a:`` at a time."""
    n = x.shape[0]
    sq = x.pow(2).sum(dim=1)
    for a in range(0, n - 1, rows):
        b = min(a + rows, n)
        d2 = torch.addmm(sq[a:].unsqueeze(0), x[a:b], x[a:].T, alpha=-2.0).add_(sq[a:b].unsqueeze(1))
        dist = d2.clamp_(min=0).sqrt_()
        upper = torch.ones(b - a, n - a, dtype=torch.bool, device=x.device).triu_(diagonal=1)
        same = y[a:b].unsqueeze(1) == y[a:].unsqueeze(0)
        yield dist[upper & same], dist[upper & ~same]


def _pair_distances(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """Distances of the pairs (i[k], j[k]), a bounded number of rows at a time."""
    parts = [(x[i[a : a + chunk]] - x[j[a : a + chunk]]).pow(2).sum(dim=1).sqrt() for a in range(0, i.numel(), chunk)]
    return torch.cat(parts) if parts else x.new_empty(0)


def _sample_pairs(x, y, n_pos, n_neg, max_pairs, seed):
    """Distances of a seeded sample: all positive pairs (or a uniform half of ``max_pairs``), uniform negatives."""
    g = torch.Generator().manual_seed(seed)
    y_cpu = y.cpu()
    order = torch.argsort(y_cpu, stable=True)
    counts = torch.unique(y_cpu, return_counts=True)[1]
    offsets = torch.cumsum(counts, 0) - counts
    if n_pos <= max_pairs // 2:
        parts = []
        for start, c in zip(offsets.tolist(), counts.tolist(), strict=True):
            if c > 1:
                iu = torch.triu_indices(c, c, offset=1)
                parts.append(order[start + iu])
        idx = torch.cat(parts, dim=1) if parts else torch.empty(2, 0, dtype=torch.int64)
    else:
        m = max_pairs // 2
        weights = (counts * (counts - 1) // 2).double()
        cls = torch.multinomial(weights, m, replacement=True, generator=g)
        size = counts[cls]
        first = (torch.rand(m, generator=g, dtype=torch.float64) * size).long().clamp_(max=size - 1)
        second = (torch.rand(m, generator=g, dtype=torch.float64) * (size - 1)).long().clamp_(max=size - 2)
        second += (second >= first).long()
        idx = torch.stack([order[offsets[cls] + first], order[offsets[cls] + second]])
    pos = _pair_distances(x, idx[0].to(x.device), idx[1].to(x.device))
    want = max_pairs - pos.numel() if n_neg else 0
    n, got, kept = x.shape[0], 0, []
    for _ in range(1000):
        if got >= want:
            break
        draw = max(1024, 2 * (want - got))
        i = torch.randint(0, n, (draw,), generator=g)
        j = torch.randint(0, n - 1, (draw,), generator=g)
        j += (j >= i).long()  # a uniform ordered pair of distinct rows: a uniform unordered pair
        ok = y_cpu[i] != y_cpu[j]
        i, j = i[ok][: want - got], j[ok][: want - got]
        kept.append(_pair_distances(x, i.to(x.device), j.to(x.device)))
        got += i.numel()
    neg = torch.cat(kept) if kept else x.new_empty(0)
    return pos, neg


def _metrics(blocks: PairBlocks, upper: float, fmrs, roc_points: int, memory_budget: int, weights=(1.0, 1.0)) -> dict:
    # sweep 1: positive distances, negative count and a histogram of negatives over [0, upper)
    edges0 = torch.linspace(0.0, upper, _BINS + 1, dtype=torch.float64)
    edges0[-1] = math.inf
    pos_parts, n_neg, hist = [], 0, torch.zeros(_BINS, dtype=torch.int64)
    for p, q in blocks():
        pos_parts.append(p.cpu())
        n_neg += q.numel()
        hist += _histogram(q, edges0)
    pos = torch.sort(torch.cat(pos_parts).double()).values if pos_parts else torch.empty(0, dtype=torch.float64)
    result: dict = {"num_positive_pairs": int(pos.numel()), "num_negative_pairs": n_neg}
    names = [f"fnmr@fmr={q:g}" for q in fmrs] + [f"threshold@fmr={q:g}" for q in fmrs]
    scalar = ("roc_auc", "eer", "eer_threshold", "best_f1", "best_f1_threshold", "best_f1_precision", "best_f1_recall")
    if pos.numel() == 0 or n_neg == 0:
        which = "positive (same-class)" if pos.numel() == 0 else "negative (different-class)"
        warnings.warn(f"no {which} pairs: verification metrics are NaN", stacklevel=3)
        result.update({k: float("nan") for k in (*scalar, *names)})
        result["roc"] = {"fpr": [], "tpr": [], "thresholds": []}
        return result

    # the ranks (0-based, among sorted negatives) that numpy's linear quantile interpolates between
    virtual = {q: (n_neg - 1) * q for q in fmrs}
    ranks = sorted({r for h in virtual.values() for r in (math.floor(h), min(math.floor(h) + 1, n_neg - 1))})
    cap = max(_MIN_COLLECT, memory_budget // 64)  # float64 values, up to 2 per wanted FMR
    # each wanted rank r → (lo, hi, below, count): it lies in [lo, hi), which holds `count` negatives, `below` are < lo
    state = {r: _locate(r, edges0, hist) for r in ranks}
    values: dict[int, float] = {}

    # sweep 2: count negatives ≤ / < each positive distance; resolve or narrow the quantile bins (more sweeps if needed)
    le = torch.zeros(pos.numel() + 1, dtype=torch.int64)
    lt = torch.zeros(pos.numel() + 1, dtype=torch.int64)
    first = True
    while first or state:
        bins = {}
        for lo, hi, _, count in set(state.values()):
            if count <= cap:
                bins[(lo, hi)] = ("collect", [])
            else:
                edges = torch.linspace(lo, hi, _BINS + 1, dtype=torch.float64)
                edges[0], edges[-1] = lo, hi
                bins[(lo, hi)] = ("refine", edges, torch.zeros(_BINS, dtype=torch.int64), [math.inf, -math.inf])
        for _, q in blocks():
            qd = q.double()
            if first:
                pos_dev = pos.to(q.device)
                le += torch.bincount(torch.searchsorted(pos_dev, qd, right=False), minlength=pos.numel() + 1).cpu()
                lt += torch.bincount(torch.searchsorted(pos_dev, qd, right=True), minlength=pos.numel() + 1).cpu()
            for (lo, hi), job in bins.items():
                inside = qd[(qd >= lo) & (qd < hi)]
                if job[0] == "collect":
                    job[1].append(inside.cpu())
                elif inside.numel():
                    job[2].add_(_histogram(inside, job[1]))
                    job[3][0] = min(job[3][0], float(inside.min()))
                    job[3][1] = max(job[3][1], float(inside.max()))
        first = False
        for r, (lo, hi, below, _) in list(state.items()):
            job = bins[(lo, hi)]
            if job[0] == "collect":
                inside = torch.sort(torch.cat(job[1])).values
                values[r] = float(inside[r - below])
                del state[r]
            elif job[3][0] == job[3][1]:  # a crowded bin of one repeated value
                values[r] = job[3][0]
                del state[r]
            else:
                lo2, hi2, below2, count2 = _locate(r - below, job[1], job[2])
                state[r] = (lo2, hi2, below + below2, count2)

    # ROC corners at every distinct positive distance v: FMR(v) = #neg ≤ v / n_neg, TPR(v) = #pos ≤ v / n_pos
    n_pos = pos.numel()
    neg_le = torch.cumsum(le, 0)[:n_pos].double()  # negatives ≤ pos[j]
    neg_lt = torch.cumsum(lt, 0)[:n_pos].double()  # negatives < pos[j]
    last = torch.ones(n_pos, dtype=torch.bool)
    last[:-1] = pos[1:] != pos[:-1]
    tp = torch.arange(1, n_pos + 1, dtype=torch.float64)[last]
    fp, thr = neg_le[last], pos[last]
    fmr, fnmr = fp / n_neg, 1 - tp / n_pos
    worst = torch.maximum(fmr, fnmr)
    k = int(torch.argmin(worst))
    result["roc_auc"] = float(((n_neg - neg_le) + 0.5 * (neg_le - neg_lt)).sum() / (n_pos * n_neg))
    result["eer"], result["eer_threshold"] = float(worst[k]), float(thr[k])
    wtp, wfp, wfn = tp * weights[0], fp * weights[1], (n_pos - tp) * weights[0]
    f1 = 2 * wtp / (2 * wtp + wfp + wfn)
    k = int(torch.argmax(f1))
    result["best_f1"], result["best_f1_threshold"] = float(f1[k]), float(thr[k])
    result["best_f1_precision"], result["best_f1_recall"] = float(wtp[k] / (wtp[k] + wfp[k])), float(tp[k] / n_pos)
    for q in fmrs:
        h = virtual[q]
        lo = math.floor(h)
        a, b, t = values[lo], values[min(lo + 1, n_neg - 1)], h - lo
        threshold = _lerp(a, b, t)
        above = n_pos - int(torch.searchsorted(pos, torch.tensor([threshold], dtype=torch.float64), right=True))
        result[f"fnmr@fmr={q:g}"] = above / n_pos
        result[f"threshold@fmr={q:g}"] = threshold
    result["roc"] = _compact_roc(fmr, 1 - fnmr, thr, roc_points)
    return result


def _histogram(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts of ``values`` in the bins ``[edges[i], edges[i + 1])`` (values outside are ignored)."""
    e = edges.to(values.device)
    idx = torch.searchsorted(e, values.double(), right=True) - 1
    idx = idx[(idx >= 0) & (idx < e.numel() - 1)]
    return torch.bincount(idx, minlength=e.numel() - 1).cpu()


def _locate(rank: int, edges: torch.Tensor, hist: torch.Tensor) -> tuple[float, float, int, int]:
    """The bin of ``hist`` holding the ``rank``-th smallest counted value: (lo, hi, count below lo, count in bin)."""
    cum = torch.cumsum(hist, 0)
    b = int(torch.searchsorted(cum, torch.tensor([rank]), right=True))
    below = int(cum[b - 1]) if b > 0 else 0
    return float(edges[b]), float(edges[b + 1]), below, int(hist[b])


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation in ``quantile`` (the form it uses on each side of t = 0.5), for exact parity."""
    diff = b - a
    return float(np.subtract(b, diff * (1 - t))) if t >= 0.5 else float(np.add(a, diff * t))


def _compact_roc(fpr: torch.Tensor, tpr: torch.Tensor, thr: torch.Tensor, points: int) -> dict[str, list[float]]:
    """About ``points`` exact ROC corners: evenly spread in TPR and log-spread in FPR, plus both ends."""
    n = fpr.numel()
    half = max(1, points // 2)
    by_tpr = torch.searchsorted(tpr.contiguous(), torch.linspace(0, 1, half, dtype=torch.float64))
    levels = torch.logspace(-6, 0, half, dtype=torch.float64)
    by_fpr = torch.searchsorted(fpr.contiguous(), levels, right=True) - 1
    keep = torch.unique(torch.cat([by_tpr, by_fpr, torch.tensor([0, n - 1])]).clamp(0, n - 1))
    return {
        "fpr": [0.0, *fpr[keep].tolist()],
        "tpr": [0.0, *tpr[keep].tolist()],
        "thresholds": [-math.inf, *thr[keep].tolist()],
    }
