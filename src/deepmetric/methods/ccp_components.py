"""Building blocks of CCP (Gürbüz, Can, Alatan, *Deep Metric Learning with Chance Constraints*, WACV 2024; docs/ccp.md).

- `kcenter_per_class`: batched greedy k-center (farthest-point) selection in every class at once, seeded with the
  previous stage's proxies (the paper's k-center re-initialisation): m[c, i] = min_j ‖X[c, i] − P_old[c, j]‖²;
  K times pick argmax_i m[c, i] and lower m with the new pick. With no previous proxies the seeds are the origin,
  so the first pick is the candidate of largest norm (as the official code's zero initialisation).
- `ProxyBank`: K proxies per class (C × K × D), flattened with their class labels for a pair loss's reference set,
  re-initialised in place to selected sample embeddings.
- `ProximalTerm`: λ/2 · ‖θ − θ̄‖² over the network's weights, as a loss whose gradient is the official code's coupled
  λ(θ − θ̄) (added before Adam); θ̄ is a snapshot of the previous stage's best weights; λ = 0 until the first one.
- `lipschitz_normalize`: v / max(1, ‖v‖), the official code's normalisation (plain L2 normalisation is the option).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def lipschitz_normalize(v: torch.Tensor) -> torch.Tensor:
    """v / max(1, ‖v‖) row-wise: vectors inside the unit ball are left as they are."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1.0)


@torch.no_grad()
def kcenter_per_class(
    pool: torch.Tensor, k: int, seeds: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-center in every class at once.

    Args:
        pool: C × b × D candidate embeddings. k: picks per class (≤ b). seeds: C × K0 × D points already
            covered (the previous stage's proxies), or None for the origin.
    Returns:
        ``(picks, indices)``: C × k × D selected embeddings and their C × k positions in the pool.
    """
    C, b, _ = pool.shape
    if not 1 <= k <= b:
        raise ValueError(f"cannot pick k={k} centres from pools of {b} candidates per class")
    if seeds is None or seeds.shape[1] == 0:
        m = pool.pow(2).sum(-1)
    else:
        m = torch.cdist(pool, seeds).pow(2).min(dim=-1).values
    rows = torch.arange(C, device=pool.device)
    indices = []
    for _ in range(k):  # k ≤ 16 steps, each vectorised over every class
        idx = m.argmax(dim=1)
        indices.append(idx)
        pick = pool[rows, idx]
        m = torch.minimum(m, (pool - pick.unsqueeze(1)).pow(2).sum(-1))
    indices = torch.stack(indices, dim=1)
    return pool[rows.unsqueeze(1), indices], indices


class ProxyBank(nn.Module):
    """C × K × D learnable proxies; ``flat()`` gives (C·K × D proxies, their C·K class labels)."""

    def __init__(self, num_classes: int, per_class: int, dim: int):
        super().__init__()
        if num_classes < 1 or per_class < 1 or dim < 1:
            raise ValueError(f"a proxy bank needs positive sizes, got C={num_classes}, K={per_class}, D={dim}")
        self.proxies = nn.Parameter(torch.zeros(num_classes, per_class, dim))
        self.register_buffer("labels", torch.arange(num_classes).repeat_interleave(per_class), persistent=False)

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proxies.reshape(-1, self.proxies.shape[-1]), self.labels

    @torch.no_grad()
    def reinitialise(self, picks: torch.Tensor) -> None:
        """Set the proxies to ``picks`` (C × K × D), e.g. k-center selected sample embeddings."""
        if picks.shape != self.proxies.shape:
            raise ValueError(f"picks of shape {tuple(picks.shape)} do not fit proxies {tuple(self.proxies.shape)}")
        self.proxies.copy_(picks)


class ProximalTerm(nn.Module):
    """λ/2 · Σ ‖θ − θ̄‖² over ``params``; inactive (0) until `anchor` stores θ̄."""

    def __init__(self, params: list[nn.Parameter], lam: float):
        super().__init__()
        self.params, self.lam = list(params), float(lam)
        self.anchors = nn.ParameterList([nn.Parameter(p.detach().clone(), requires_grad=False) for p in self.params])
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))
        self._active = False  # a host copy of ``active``: no device sync in the training step
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_active", bool(module.active)))

    @torch.no_grad()
    def anchor(self, weights: list[torch.Tensor] | None = None) -> None:
        """θ̄ ← ``weights`` (the previous stage's best), or the current weights; activates the term."""
        source = weights if weights is not None else [p.detach() for p in self.params]
        for a, w in zip(self.anchors, source, strict=True):
            a.copy_(w)
        self.active.fill_(True)
        self._active = True

    def forward(self) -> torch.Tensor:
        if not self._active or self.lam == 0:
            return self.params[0].sum() * 0
        return 0.5 * self.lam * sum((p - a).pow(2).sum() for p, a in zip(self.params, self.anchors, strict=True))
