"""DaNCE: DiVA's self-supervised task, a MoCo-style contrast with distance-adapted negative weights
(Milbich, Roth et al., ECCV 2020; formulas as in its official code, ``criteria/fast_moco.py``).

For a query q_i (this network, view A), its key k_i (EMA key encoder, view B) and queue entries Q_j (all L2-normalised):

    s⁺_i = q_i·k_i,  s_ij = q_i·Q_j,  d_ij = max(sqrt(2 − 2 s_ij), c_lo)
    ℓ_ij = (2 − D) ln d_ij − ((D − 3)/2) ln(1 − d_ij²/4)        (log 1/q(d), Wu et al. 2017, eq. 3; as the miners)
    logits_i = [s⁺_i, ω_i1 s_i1, …, ω_iN s_iN] / T,   L = mean_i CE(logits_i, 0)

The weights ω (detached) multiply the similarity inside the exponent, as in the reference code. ``weighting``:
``fixed`` (per-query max, zero beyond c_hi, each row normalised to 1; the corrected version), ``legacy`` (one global
max, each queue entry normalised over the batch; what the published numbers used), ``none`` (plain MoCo, ω = 1).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .geometry import log_inverse_sphere_density

WEIGHTINGS = ("fixed", "legacy", "none")


def dance_weights(sim: torch.Tensor, dim: int, weighting: str, lower: float = 0.5, upper: float = 1.4) -> torch.Tensor:
    """ω (B × N) from query–queue similarities ``sim``."""
    if weighting == "none":
        return torch.ones_like(sim)
    d = (2 - 2 * sim).clamp_min(0).sqrt().clamp(min=lower, max=2 - 1e-4)
    log_w = log_inverse_sphere_density(d, dim)
    if weighting == "fixed":
        w = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values)
    else:
        w = torch.exp(log_w - log_w.max())
    w = w.masked_fill(d > upper, 0).clamp_min(1e-45)
    return w / w.sum(dim=1, keepdim=True) if weighting == "fixed" else w / w.sum(dim=0, keepdim=True)


class DaNCELoss(nn.Module):
    def __init__(self, temperature: float = 0.01, weighting: str = "fixed", lower_cutoff: float = 0.5,
                 upper_cutoff: float = 1.4):  # fmt: skip
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.weighting = temperature, weighting
        self.lower_cutoff, self.upper_cutoff = lower_cutoff, upper_cutoff

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """queries (B × D, with gradient), keys (B × D) and queue (N × D) are normalised here."""
        q = F.normalize(queries, dim=1)
        k = F.normalize(keys.detach(), dim=1)
        bank = F.normalize(queue.detach(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        sim = q @ bank.T
        with torch.no_grad():
            w = dance_weights(sim.detach(), q.shape[1], self.weighting, self.lower_cutoff, self.upper_cutoff)
        logits = torch.cat([positive, w * sim], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
