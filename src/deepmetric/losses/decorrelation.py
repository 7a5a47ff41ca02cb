"""DiVA's adversarial decorrelation of embedding heads (Milbich, Roth et al., ECCV 2020; as its official code,
``criteria/adversarial_separation.py``).

For every explicit (source, target, ρ): ĝ_h = normalize(GRL(f_h)), r = normalize(R_{s→t}(ĝ_s)) with a
D → hidden → D regressor, C = mean_batch mean_dims (ĝ_t ⊙ r)², and L += −ρ·C. Minimising L trains each regressor
to predict the target head from the source head; the gradient reversal makes the heads and backbone minimise C at
the same time (a min–max game). Each pair carries its own ρ, so none is silently dropped.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gradient_reversal import reverse_gradient


def coactivation(target: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """C = mean over the batch and dimensions of the squared element-wise product of two unit-vector sets."""
    return (target * predicted).pow(2).mean()


class AdversarialDecorrelation(nn.Module):
    def __init__(self, pairs, dim: int = 128, hidden: int = 512):
        super().__init__()
        self.pairs = []
        for item in pairs:
            if len(item) != 3:
                raise ValueError(f"decorrelation pairs are (source, target, rho) triples, got {item!r}")
            source, target, rho = item
            if source == target:
                raise ValueError(f"a head cannot be decorrelated from itself: {source!r}")
            self.pairs.append((str(source), str(target), float(rho)))
        self.regressors = nn.ModuleDict(
            {
                f"{s}->{t}": nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
                for s, t, _ in self.pairs
            }
        )

    def forward(self, embeddings: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, {"s->t": C})`` for the heads' embeddings (B × D each)."""
        missing = sorted({h for s, t, _ in self.pairs for h in (s, t)} - set(embeddings))
        if missing:
            raise ValueError(f"decorrelation pairs name head(s) {missing} that the model does not have")
        g = {h: F.normalize(reverse_gradient(e), dim=1) for h, e in embeddings.items()}
        loss = torch.zeros((), device=next(iter(embeddings.values())).device)
        parts = {}
        for s, t, rho in self.pairs:
            r = F.normalize(self.regressors[f"{s}->{t}"](g[s]), dim=1)
            c = coactivation(g[t], r)
            parts[f"{s}->{t}"] = c.detach()
            loss = loss - rho * c
        return loss, parts
