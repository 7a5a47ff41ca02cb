"""Match thresholds chosen on a labelled calibration set, and a confidence for every distance.

Deployed retrieval answers "match" when a query's nearest indexed item lies within a distance threshold T, and "no
match" otherwise; the match's label is that item's label. Calibration simulates this on a labelled set (the run's
validation split): every item queries all the others (leave one out), giving its nearest distance d and whether
that neighbour's label is its own. Then, for a threshold T,

- ``accepted(T)``  = queries with d ≤ T (answered "match"),
- ``precision(T)`` = correct matches / accepted (how often a "match" names the right label),
- ``recall(T)``    = correct matches / answerable queries (those whose label has another item in the set),
- ``f1(T)``        = their harmonic mean,

and, for pairs (as in `verification_metrics`), ``FMR(T)`` = different-class pairs within T / all such pairs and
``FNMR(T)`` = same-class pairs beyond T / all such pairs.

Targets: ``precision=p`` picks the largest T whose precision is still ≥ p (the most matches at that precision);
``f1`` the T of the largest F1; ``fmr=q`` the pair threshold at false match rate q (open-metric-learning's quantile
definition, `verification_metrics`' ``threshold@fmr=q``). A chosen T lies halfway to the next larger nearest distance,
so a distance exactly as far as the last accepted one on the calibration set is still accepted.

The confidence of a match at distance d is the isotonic (non-increasing in d) least-squares fit of "the nearest
neighbour's label was right" against d over the calibration queries (pool-adjacent-violators): the fraction of
calibration matches at about that distance that were right. It is stored as a curve of at most ``max_knots`` points
and read by linear interpolation.

Distances are Euclidean between L2-normalised embeddings, sqrt(2 − 2 cos), in [0, 2]: what the search index reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .inputs import as_embeddings, as_labels
from .knn import DEFAULT_MEMORY_BUDGET, iter_knn
from .verification import pair_rates_at, verification_metrics

TARGETS = ("precision", "f1", "fmr")


@dataclass(frozen=True)
class Target:
    """What the threshold is chosen for: ``precision`` (value p in (0, 1]), ``fmr`` (value q in (0, 1]) or ``f1``."""

    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """``precision=0.95``, ``fmr=1e-3`` or ``f1`` (a `ConfigError` naming the text otherwise)."""
        kind, sep, raw = str(text).strip().partition("=")
        kind = kind.strip().lower()
        if kind not in TARGETS:
            raise ConfigError(f"calibration target {text!r}: give precision=P, fmr=Q or f1 (e.g. precision=0.95)")
        if kind == "f1":
            if sep:
                raise ConfigError(f"calibration target {text!r}: f1 takes no value (the best F1 is chosen)")
            return cls("f1")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"calibration target {text!r}: {kind} needs a value in (0, 1], e.g. {kind}=0.95")
        return cls(kind, value)

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value:g}"


@dataclass(frozen=True)
class NearestDecisions:
    """Leave-one-out nearest neighbours of a labelled set: distance, whether its label is right, answerable."""

    distance: np.ndarray  # N, float64, ascending
    correct: np.ndarray  # N, bool
    answerable: int  # queries whose label has another item in the set

    def at(self, threshold: float) -> dict[str, float]:
        """Precision, recall, F1 and the accepted fraction of matching at ``threshold``."""
        keep = self.distance <= threshold
        accepted, right = int(keep.sum()), int(self.correct[keep].sum())
        precision = right / accepted if accepted else math.nan
        recall = right / self.answerable if self.answerable else math.nan
        f1 = 2 * right / (accepted + self.answerable) if accepted + self.answerable else math.nan
        return {"precision": precision, "recall": recall, "f1": f1, "accepted": accepted / len(self.distance)}


def nearest_decisions(embeddings, labels, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> NearestDecisions:
    """Every item's nearest other item (exact, chunked), sorted by distance."""
    x = F.normalize(as_embeddings(embeddings, "embeddings").float(), dim=1)
    y = as_labels(labels, "labels", x.shape[0]).to(x.device)
    n = x.shape[0]
    if n < 2:
        raise ConfigError(f"calibration needs at least 2 labelled items, got {n}")
    scores, neighbours = [], []
    for chunk in iter_knn(x, x, 1, self_index=torch.arange(n, device=x.device), memory_budget=memory_budget):
        scores.append(chunk.scores[:, 0])
        neighbours.append(chunk.indices[:, 0])
    cos = torch.cat(scores).double().clamp(-1, 1)
    distance = (2 - 2 * cos).clamp(min=0).sqrt().cpu().numpy()
    correct = (y[torch.cat(neighbours).to(y.device)] == y).cpu().numpy()
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    answerable = int((counts[inverse] > 1).sum())
    order = np.argsort(distance, kind="stable")
    return NearestDecisions(distance[order], correct[order], answerable)


def choose_threshold(decisions: NearestDecisions, target: Target) -> float:
    """The threshold for a ``precision`` or ``f1`` target (see the module docstring); a `ConfigError` when no
    threshold reaches the precision asked for, naming the best one there is."""
    d, right = decisions.distance, decisions.correct.astype(np.int64)
    # decisions only change between distinct distances: the last index of each distinct value
    last = np.r_[d[1:] != d[:-1], True]
    cum_right = np.cumsum(right)[last]
    accepted = np.arange(1, len(d) + 1)[last]
    values = d[last]
    if target.kind == "precision":
        precision = cum_right / accepted
        ok = np.flatnonzero(precision >= target.value - 1e-12)
        if not len(ok):
            best = int(np.argmax(precision))
            raise ConfigError(
                f"no threshold reaches precision {target.value:g} on the calibration set: its best is "
                f"{precision[best]:.4f} (accepting the {accepted[best]} closest of {len(d)} queries); lower the target"
            )
        i = int(ok[-1])
    elif target.kind == "f1":
        f1 = 2 * cum_right / (accepted + decisions.answerable)
        i = int(np.argmax(f1))
    else:
        raise ValueError(f"choose_threshold handles precision and f1 targets, not {target.kind}")
    return _halfway(values, i)


def _halfway(values: np.ndarray, i: int) -> float:
    """Between the accepted ``values[i]`` and the next larger distance (or a hair above the last)."""
    if i + 1 < len(values):
        return float((values[i] + values[i + 1]) / 2)
    return float(min(2.0, values[i] + 1e-6))


def isotonic_decreasing(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the non-increasing least-squares fit of ``y`` on ascending ``x``, as blocks
    ``(mean x, fitted value, number of points)``; ties in ``x`` share a block, and so do blocks of equal value
    (the fitted values strictly decrease)."""
    _, start = np.unique(x, return_index=True)  # equal x first, then adjacent groups whose means increase are pooled
    sums = np.add.reduceat(y.astype(np.float64), start)
    counts = np.diff(np.r_[start, len(x)]).astype(np.float64)
    xs = np.add.reduceat(x.astype(np.float64), start)
    blocks: list[list[float]] = []  # [sum y, count, sum x]
    for s, c, sx in zip(sums, counts, xs, strict=True):
        blocks.append([s, c, sx])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] <= blocks[-1][0] / blocks[-1][1]:
            s2, c2, x2 = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += c2
            blocks[-1][2] += x2
    b = np.array(blocks)
    return b[:, 2] / b[:, 1], b[:, 0] / b[:, 1], b[:, 1].astype(np.int64)


def confidence_curve(decisions: NearestDecisions, max_knots: int = 256) -> dict[str, list[float]]:
    """The isotonic confidence as ``{"distance": [...], "confidence": [...]}`` (at most ``max_knots`` points)."""
    xs, ys, _ = isotonic_decreasing(decisions.distance, decisions.correct)
    if len(xs) > max_knots:
        keep = np.unique(np.linspace(0, len(xs) - 1, max_knots).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    return {"distance": [float(v) for v in xs], "confidence": [float(v) for v in ys]}


def read_confidence(curve: dict, distance) -> np.ndarray:
    """The curve's confidence at ``distance`` (linear between knots, flat beyond the ends)."""
    return np.interp(np.asarray(distance, dtype=np.float64), curve["distance"], curve["confidence"])


def calibrate(embeddings, labels, target: Target | str, *, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict:
    """The threshold for ``target`` on a labelled set, what it achieves there, and the confidence curve.

    Returns ``{"target", "threshold", "achieved": {"precision", "recall", "f1", "accepted", "fmr", "fnmr"},
    "confidence_curve", "num_items", "num_classes", "num_answerable"}``.
    """
    target = Target.parse(target) if isinstance(target, str) else target
    decisions = nearest_decisions(embeddings, labels, memory_budget)
    if decisions.answerable == 0:
        raise ConfigError("every label occurs once in the calibration set: no query can be matched to its label; "
                          "calibrate on a set with several items per label")  # fmt: skip
    if target.kind == "fmr":
        found = verification_metrics(embeddings, labels, fmrs=(target.value,), memory_budget=memory_budget)
        threshold = float(found[f"threshold@fmr={target.value:g}"])
    else:
        threshold = choose_threshold(decisions, target)
    achieved = decisions.at(threshold)
    achieved.update(pair_rates_at(embeddings, labels, threshold, memory_budget=memory_budget))
    y = as_labels(labels, "labels", len(decisions.distance))
    return {
        "target": str(target),
        "threshold": threshold,
        "achieved": achieved,
        "confidence_curve": confidence_curve(decisions),
        "num_items": len(decisions.distance),
        "num_classes": int(torch.unique(y).numel()),
        "num_answerable": decisions.answerable,
    }
