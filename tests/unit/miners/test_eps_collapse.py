"""The EPS claim, in seconds: classes made of separated Gaussian modes keep their modes apart with EPS and
collapse without it, while the coarse task stays solved (the claim of Levi et al. 2021, checked on a small synthetic
task of our own, not the paper's protocol)."""

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import TripletMarginMiner

from deepmetric.evaluation import retrieval_metrics
from deepmetric.evaluation.diagnostics import spread_ratio
from deepmetric.miners import EasyPositiveMiner


def blobs(seed=0, modes=12, per_mode=200, dim=8):
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(modes, dim, generator=g)
    fine = torch.arange(modes).repeat_interleave(per_mode)
    x = centres[fine] + 0.35 * torch.randn(len(fine), dim, generator=g)
    perm = torch.randperm(len(fine), generator=g)
    train, test = perm[: len(fine) // 2], perm[len(fine) // 2 :]
    return x, fine, fine % 4, train, test


def train_embedding(miner, seed=0, iterations=300):
    x, fine, coarse, train, test = blobs(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(8, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, 32))  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = TripletMarginLoss(margin=0.2)
    g = torch.Generator().manual_seed(seed)
    by_class = [train[coarse[train] == c] for c in range(4)]
    for _ in range(iterations):
        batch = torch.cat([members[torch.randint(len(members), (32,), generator=g)] for members in by_class])
        emb = F.normalize(net(x[batch]), dim=1)
        loss = loss_fn(emb, coarse[batch], miner(emb, coarse[batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        emb = F.normalize(net(x[test]), dim=1)
    return spread_ratio(emb, fine[test], coarse[test]), retrieval_metrics(emb, coarse[test], ks=(1,))["recall@1"]


def test_eps_keeps_the_modes_of_a_class_apart():
    spread_vanilla, r1_vanilla = train_embedding(TripletMarginMiner(margin=0.2, type_of_triplets="semihard"))
    spread_eps, r1_eps = train_embedding(EasyPositiveMiner("semihard"))
    assert r1_vanilla >= 0.95 and r1_eps >= 0.95
    assert spread_eps > 2 * spread_vanilla, (spread_eps, spread_vanilla)
