"""How much training signal DiVA's DaNCE task gives a trained run, under each negative weighting.

    python -m benchmarks.dance_signal RUN_DIR [RUN_DIR ...] --batches 8

For each run (a DiVA run directory with ``checkpoints/last.pt``) it draws ``--batches`` training batches as the
trainer does (two augmented views), and with the run's own query network, EMA key network and queue computes, per
query: the positive similarity s⁺ = q·k, how many queue entries lie closer than the weights' lower cutoff (by
default d < 0.5, i.e. s > 0.875: they share the largest weight), the largest weighted negative max_j ω_ij·s_ij (the
logits are these over the temperature T, `deepmetric.losses.dance`), the DaNCE loss (the batch mean) and the norm of its
gradient with respect to each query, under the ``fixed`` weighting (per query, the corrected code), ``legacy`` (per
queue entry, what the paper's numbers used) and ``none`` (plain MoCo). A loss near 0 means the positive logit s⁺/T
dwarfs every negative one: the task trains nothing, and from then on the self-similarity head learns only through
its decorrelation pair.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/dance_signal.py`: import `benchmarks` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks._report import command_line, emit
from deepmetric.losses.dance import WEIGHTINGS, DaNCELoss, dance_weights
from deepmetric.methods.diva import DivaMethod


def signal_of(run_dir: Path, batches: int) -> dict[str, float]:
    """Means over the queries of ``batches`` training batches of ``run_dir``'s last checkpoint (see the module)."""
    from deepmetric.run import build_train_loader, load_run

    run = load_run(run_dir, "last")
    method, data, cfg = run.method, run.data, run.cfg
    if not isinstance(method, DivaMethod):
        raise SystemExit(f"{run_dir}: method.name is {cfg.method.name!r}; this study reads DiVA runs only")
    filled = int(method.queue_filled)
    if not filled:
        raise SystemExit(f"{run_dir}: the DaNCE queue of checkpoints/last.pt is empty (saved before its first step)")
    queue = F.normalize(method.queue[-filled:], dim=1)
    dance = method.dance
    close_sim = 1 - dance.lower_cutoff**2 / 2  # d = sqrt(2 - 2s) < lower cutoff
    loader = iter(build_train_loader(data, cfg, run.device))
    found: dict[str, list[float]] = {}

    def add(key: str, values: torch.Tensor) -> None:
        found.setdefault(key, []).extend(values.flatten().tolist())

    for i in range(batches):
        images = next(loader)["image"].to(run.device)
        view_a, view_b = data.train_aug(images, seed=10_000 + i, views=2)
        with torch.no_grad():
            q = F.normalize(method.model(view_a)["selfsimilarity"], dim=1)
            k = F.normalize(method.key_model(view_b)["selfsimilarity"], dim=1)
            sim = q @ queue.T
        add("s+", (q * k).sum(dim=1))
        add("close", (sim > close_sim).sum(dim=1).float())
        for weighting in WEIGHTINGS:
            w = dance_weights(sim, q.shape[1], weighting, dance.lower_cutoff, dance.upper_cutoff)
            add(f"{weighting} max ωs", (w * sim).max(dim=1).values)
            query = q.clone().requires_grad_(True)  # the batch at once: legacy weights are normalised over it
            loss = DaNCELoss(dance.temperature, weighting, dance.lower_cutoff, dance.upper_cutoff)(query, k, queue)
            (grad,) = torch.autograd.grad(loss * len(q), query)  # row i: the gradient of query i's own loss
            add(f"{weighting} loss", loss.detach())
            add(f"{weighting} |grad|", grad.norm(dim=1))
    return {key: sum(v) / len(v) for key, v in found.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="DiVA run directories (with checkpoints/last.pt)")
    ap.add_argument("--batches", type=int, default=8, help="training batches drawn per run")
    ap.add_argument("--write", help="append the table to this markdown file")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    columns = ["s+", "close", *(f"{w} {part}" for w in WEIGHTINGS for part in ("max ωs", "loss", "|grad|"))]
    lines = [command_line(), "", "| run | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for run_dir in args.runs:
        values = signal_of(run_dir, args.batches)
        lines.append(f"| {run_dir} | " + " | ".join(f"{values[c]:.3g}" for c in columns) + " |")
    emit(lines, args.write)


if __name__ == "__main__":
    main()
