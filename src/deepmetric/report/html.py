"""``report.html``: a self-contained page (images embedded) with the metrics table and the run's plots.

The PNGs are also written to ``RUN_DIR/report/``.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..training.checkpoint import read_json, read_records, write_text
from . import failures, plots

METRIC_ORDER = ("recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "r_precision", "map@r", "nmi", "ami")


def _metric_columns(metrics: dict) -> list[tuple[str, dict]]:
    """(header, values) of the metrics table: the trained model on test and validation, then the baseline (the
    model before training, and a pretrained trunk's pooled features) on test, so a reader sees what training added."""
    columns = [("test", metrics.get("test", {})), ("validation (best)", metrics.get("val", {}))]
    baseline = metrics.get("baseline") or {}
    if "test" in baseline:
        columns.append(("test, before training", baseline["test"]))
    if "test" in baseline.get("trunk", {}):
        columns.append(("test, pretrained trunk pooled (no head)", baseline["trunk"]["test"]))
    return columns


def _metric_rows(metrics: dict) -> list[tuple[str, ...]]:
    columns = _metric_columns(metrics)
    keys = [k for k in metrics.get("test", {}) if not k.startswith("num_")]
    keys.sort(key=lambda k: (k.split("/")[0] if "/" in k else "", METRIC_ORDER.index(k.split("/")[-1])
                             if k.split("/")[-1] in METRIC_ORDER else 99, k))  # fmt: skip
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    return [(k, *(fmt(values.get(k)) for _, values in columns)) for k in keys]


def _image(table, index: int) -> np.ndarray:
    from ..data import decode_image

    img = table.images[index] if table.images is not None else decode_image(table.paths[index], 3, 128)
    arr = img.permute(1, 2, 0).numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def _name(names: dict | None, label) -> str:
    return str((names or {}).get(int(label), int(label)))


def _figures(run_dir: Path, run, test_embedded=None) -> tuple[dict[str, Path], dict[str, list[tuple]]]:
    """(figures by title, tables by title: header row first) of the report."""
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    tables: dict[str, list[tuple]] = {}
    log = run_dir / "log.jsonl"
    records = read_records(log)
    if plots.training_curves(records, out_dir / "curves.png"):
        figures["Training and validation curves"] = out_dir / "curves.png"
    if run is None:
        return figures, tables
    from ..training.evaluate import per_class_recall

    cfg, table = run.cfg, run.data.table
    emb = test_embedded if test_embedded is not None else run.embed("test")  # the trainer hands its final ones over
    names = table.class_names
    x = F.normalize(emb.embeddings, dim=1)
    plots.tsne(x.numpy(), emb.labels, names, out_dir / "tsne.png", cfg.report.tsne_points, cfg.train.seed)
    figures["t-SNE of the test embeddings"] = out_dir / "tsne.png"

    rng = np.random.default_rng(cfg.train.seed)
    q = rng.permutation(len(emb.labels))[: cfg.report.grid_queries]
    k = min(cfg.report.grid_neighbours, len(emb.labels) - 1)
    if k >= 1:
        nn_idx = (x[q] @ x.T).index_put_((torch.arange(len(q)), torch.as_tensor(q)), torch.tensor(-2.0)).topk(k).indices
        queries = [_image(table, int(emb.indices[i])) for i in q]
        neighbours = [[_image(table, int(emb.indices[j])) for j in row] for row in nn_idx.tolist()]
        correct = [
            [bool(emb.labels[j] == emb.labels[i]) for j in row] for i, row in zip(q, nn_idx.tolist(), strict=True)
        ]
        plots.retrieval_grid(queries, neighbours, correct, out_dir / "retrieval.png")
        figures["Retrieval examples"] = out_dir / "retrieval.png"
    per_class = per_class_recall(emb, cfg.eval)
    plots.per_class_recall(per_class, names, out_dir / "per_class_recall.png")
    figures["Per-class recall@1"] = out_dir / "per_class_recall.png"
    worst = failures.worst_queries(emb.embeddings, emb.labels, cfg.report.grid_queries)
    if worst and k >= 1:
        nearest = failures.neighbours(emb.embeddings, k)
        rows = [i for i, _ in worst]
        plots.retrieval_grid(
            [_image(table, int(emb.indices[i])) for i in rows],
            [[_image(table, int(emb.indices[j])) for j in nearest[i].tolist()] for i in rows],
            [[bool(emb.labels[j] == emb.labels[i]) for j in nearest[i].tolist()] for i in rows],
            out_dir / "worst_queries.png",
            title="the test queries with the lowest average precision and their nearest neighbours (green: same "
            "class, red: other class)",
            row_labels=[f"{_name(names, emb.labels[i])[:16]}\nAP {ap:.2f}" for i, ap in worst],
        )
        figures["Worst queries (lowest average precision)"] = out_dir / "worst_queries.png"
        tables["Most confused class pairs (rank-1 neighbour of the other class)"] = [
            ("class", "class", "confusions", "images of both")
        ] + [(_name(names, a), _name(names, b), str(n), str(size))
             for a, b, n, size in failures.confused_pairs(emb.labels, nearest, 10)]  # fmt: skip
        tables["Worst classes (recall@1)"] = [("class", "recall@1")] + [
            (_name(names, c), f"{v:.3f}") for c, v in failures.worst_classes(per_class, 10)
        ]
    if len(np.unique(emb.labels)) > 1:
        from ..evaluation import verification_metrics

        normalize = run.method.normalize_embeddings if cfg.eval.normalize is None else cfg.eval.normalize
        ver = verification_metrics(emb.embeddings, emb.labels, normalize=normalize, max_pairs=2_000_000,
                                   seed=cfg.train.seed, memory_budget=cfg.eval.memory_budget)  # fmt: skip
        positives, negatives = failures.pair_distances(emb.embeddings, emb.labels, 20_000, cfg.train.seed, normalize)
        if ver["num_positive_pairs"] and ver["num_negative_pairs"]:
            plots.verification(ver, positives, negatives, out_dir / "verification.png")
            figures["Verification: same-class vs different-class pairs"] = out_dir / "verification.png"
            shown = ("eer", "roc_auc", "fnmr@fmr=0.1", "fnmr@fmr=0.01", "best_f1", "best_f1_threshold")
            title = "Verification (test pairs" + (", sampled)" if ver["sampled"] else ")")
            tables[title] = [("metric", "value")] + [(k, f"{ver[k]:.4f}") for k in shown if k in ver]
    if (emb.coarse_labels >= 0).all():
        groups = {c: np.unique(emb.labels[emb.coarse_labels == c]) for c in np.unique(emb.coarse_labels)}
        coarse, fines = max(groups.items(), key=lambda kv: (len(kv[1]), -kv[0]))
        if len(fines) > 1:
            members = np.flatnonzero(emb.coarse_labels == coarse)
            members = np.random.default_rng(cfg.train.seed).permutation(members)[: cfg.report.tsne_points]
            coarse_name = (table.coarse_names or {}).get(int(coarse), str(coarse))
            title = f"coarse class '{coarse_name}': test embeddings by fine class (collapse shows as one blob)"
            plots.coarse_class_plot(x[members].numpy(), emb.labels[members], names, title,
                                    out_dir / "coarse_class.png", cfg.train.seed)  # fmt: skip
            figures[f"Inside the coarse class '{coarse_name}'"] = out_dir / "coarse_class.png"
    return figures, tables


def write_report(run_dir: str | Path, run=None, test_embedded=None) -> Path:
    """Write ``report.html`` (+ PNGs) for the run in ``run_dir``; ``run`` (a `LoadedRun` or the `Trainer`, with the
    selected weights loaded: ``.cfg``, ``.data``, ``.embed(split)``) provides the test embeddings for the t-SNE,
    retrieval grid and per-class plots (``test_embedded``: those embeddings already computed)."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    figures, tables = _figures(run_dir, run, test_embedded)
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in _metric_rows(metrics)
    )
    header = "".join(f"<th>{html.escape(h)}</th>" for h, _ in _metric_columns(metrics))
    selected = metrics.get("selected", {})
    notes = [f"protocol: {metrics.get('protocol', '?')}", f"steps: {metrics.get('steps', '?')}"]
    if selected.get("split"):
        notes.append(f"best checkpoint: step {selected['step']} by {selected['split']} {selected['metric']} = "
                     f"{selected['value']:.4f}")  # fmt: skip
    if "warning" in metrics:
        notes.append(f"<b>warning:</b> {html.escape(metrics['warning'])}")
    if "skipped_images" in metrics:
        notes.append(f"skipped unreadable images: {metrics['skipped_images']['count']}")
    for split, info in metrics.get("splits", {}).items():
        notes.append(f"{split}: {info['images']} images, {info['classes']} classes")
    images = "".join(
        f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
        f"src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
        for title, path in figures.items()
    )
    images += "".join(
        f"<h2>{html.escape(title)}</h2><table class='failures'><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
        + "</table>"
        for title, rows in tables.items()
        if len(rows) > 1
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deepmetric report: {html.escape(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 12px; }}
th {{ background: #f0f0f0; }} td:nth-child(n+2) {{ text-align: right; font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; border: 1px solid #eee; }} pre {{ background: #f7f7f7; padding: 1em; overflow: auto; }}
</style></head><body>
<h1>deepmetric run <code>{html.escape(run_dir.name)}</code></h1>
<p>{"<br>".join(notes)}</p>
<h2>Metrics</h2>
<table id="metrics"><tr><th>metric</th>{header}</tr>{rows}</table>
{images}
<h2>Configuration</h2><pre>{html.escape(config)}</pre>
</body></html>
"""
    path = run_dir / "report.html"
    write_text(path, page)
    return path
