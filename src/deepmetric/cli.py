"""The ``deepmetric`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parse_options(pairs: list[str]) -> dict[str, str]:
    """``datasets info --option KEY=VALUE``: the loader's keyword arguments, through the one KEY=VALUE parser."""
    from .config import parse_overrides
    from .errors import ConfigError

    try:
        return dict(item.partition("=")[::2] for item in parse_overrides(pairs))
    except ConfigError:
        bad = next(p for p in pairs if not p.partition("=")[0].strip() or "=" not in p)
        raise ConfigError(f"--option expects KEY=VALUE (e.g. --option coarse_column=base), got {bad!r}") from None


def cmd_datasets(args) -> int:
    from .data import DATASETS, check_files, load_dataset

    if args.action == "list":
        for name, loader in DATASETS.items():
            summary = ((loader.__module__ and sys.modules[loader.__module__].__doc__) or "").strip().splitlines()[0]
            print(f"{name:14s} {summary}")
        return 0
    if not args.name:
        raise SystemExit("deepmetric datasets info: give a dataset NAME (see `deepmetric datasets list`)")
    try:
        table = load_dataset(args.name, args.root, **_parse_options(args.option))
    except (FileNotFoundError, ValueError) as e:
        print(f"deepmetric: {e}", file=sys.stderr)
        return 2
    summary = table.summary()
    summary["root"] = table.root
    problems = check_files(table, decode=args.decode, progress=not args.quiet)
    summary["files_checked"] = len(table.paths) if table.paths is not None else 0
    summary["problems"] = [{"path": p, "problem": what} for p, what in problems]
    print(json.dumps(summary, indent=2))
    if problems:
        print(f"deepmetric: {len(problems)} image file(s) missing or corrupt, e.g. {problems[0][0]}", file=sys.stderr)
        return 1
    return 0


def cmd_train(args) -> int:
    from .api import train

    if args.resume is None and args.config is None:
        raise SystemExit("deepmetric train: give a CONFIG file (e.g. configs/demo.yaml) or --resume RUN_DIR")
    overrides = list(args.overrides)
    if args.resume is not None and args.config is not None and "=" in args.config:
        # `train --resume RUN train.max_steps=600`: the first KEY=VALUE lands in the CONFIG slot
        args.config, overrides = None, [args.config, *overrides]
    from . import distributed

    run_dir, metrics = train(args.config, overrides, output=args.output, resume=args.resume, overwrite=args.overwrite,
                             quiet=args.quiet)  # fmt: skip
    main_process = distributed.is_main()
    distributed.teardown()
    if not main_process:
        return 0
    _print_metrics("test", metrics["test"])
    _print_baseline(metrics)
    print(f"run directory: {run_dir}")
    if (run_dir / "report.html").is_file():
        print(f"report: {run_dir / 'report.html'}")
    return 0


def cmd_compare(args) -> int:
    from .compare import find_runs, group_runs, plot_curves, read_run, render, summarise

    paths = find_runs(args.runs)
    if not paths:
        raise FileNotFoundError(f"no run directories (with a config.yaml) in {' '.join(args.runs)}")
    groups = group_runs([read_run(p) for p in paths])
    print(render(summarise(groups, args.metrics, args.split), args.metrics, args.format))
    if args.plot:
        written = plot_curves(groups, args.plot_metric or args.metrics[0], args.plot)
        print(f"written: {written}", file=sys.stderr)
    return 0


def cmd_mlrc(args) -> int:
    from .training.mlrc import markdown, run_mlrc

    for item in args.overrides:
        if "=" not in item:
            raise SystemExit(f"deepmetric mlrc: overrides are KEY=VALUE, got {item!r}")
    from . import distributed

    summary = run_mlrc(args.config, args.output, list(args.overrides), folds=args.folds, only=args.only,
                       quiet=args.quiet)  # fmt: skip
    main_process = distributed.is_main()
    distributed.teardown()
    if not main_process:
        return 0
    print(markdown(summary, Path(args.config).stem))
    print(f"written: {Path(args.output) / 'mlrc.json'}, {Path(args.output) / 'mlrc.md'}")
    return 0


def _print_metrics(split: str, metrics: dict) -> None:
    shown = {k: v for k, v in metrics.items() if not k.startswith("num_") and not _verification_detail(k, v)}
    print(f"{split} metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))


def _verification_detail(key: str, value) -> bool:
    """Verification entries too detailed for the one-line summary (counts, thresholds, flags); --json has them."""
    return key.startswith("verification/") and (
        "num_" in key or "threshold" in key or "precision" in key or "recall" in key or isinstance(value, bool | dict)
    )


BASELINE_KEYS = ("recall@1", "map@r", "nmi", "fine/recall@1", "fine/map@r", "coarse/recall@1")


def _print_baseline(metrics: dict) -> None:
    """The test metrics before training (and of a pretrained trunk's pooled features) beside the trained model's."""
    baseline = metrics.get("baseline") or {}
    if "test" not in baseline:
        return
    rows = [("trained (selected checkpoint)", metrics["test"]), ("baseline: model as built", baseline["test"])]
    if "test" in baseline.get("trunk", {}):
        rows.append(("baseline: pretrained trunk, pooled", baseline["trunk"]["test"]))
    keys = [k for k in BASELINE_KEYS if k in metrics["test"]]
    print("test".ljust(36) + "".join(k.rjust(15) for k in keys))
    for name, values in rows:
        print(name.ljust(36) + "".join(f"{values.get(k, float('nan')):15.4f}" for k in keys))


def cmd_evaluate(args) -> int:
    from .run import load_run

    run = load_run(args.run_dir, args.checkpoint, args.device)
    emb = run.embed(args.split, progress=not args.quiet)
    metrics = run.score(args.split, emb)
    if args.verification:
        from .evaluation import verification_metrics

        normalize = run.method.normalize_embeddings if run.cfg.eval.normalize is None else run.cfg.eval.normalize
        found = verification_metrics(emb.embeddings, emb.labels, normalize=normalize, max_pairs=args.max_pairs,
                                     seed=run.cfg.train.seed)  # fmt: skip
        roc = found.pop("roc")
        metrics.update({f"verification/{k}": v for k, v in found.items()})
        if args.json:
            metrics["verification/roc"] = roc
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_metrics(args.split, metrics)
    return 0


def cmd_embed(args) -> int:
    import numpy as np

    from .training.checkpoint import atomic_write_bytes, write_json

    if (args.images is None) == (args.split is None):
        raise SystemExit("deepmetric embed: give either --images DIR|CSV or --split train|val|test")
    if args.images is not None:
        from .retrieval import list_images, load

        model = load(args.run_dir, args.checkpoint, args.device)
        paths, labels = list_images(args.images)
        emb, kept, bad = model.embed_paths(paths, progress=not args.quiet)
        position = {p: i for i, p in enumerate(paths)}
        labels = [labels[position[p]] for p in kept] if labels is not None else None
        _report_bad(bad)
        ids, source = kept, {"images": str(args.images), "skipped": [{"path": p, "reason": r} for p, r in bad]}
    else:
        from .run import load_run
        from .training.evaluate import embed_split

        run = load_run(args.run_dir, args.checkpoint, args.device)
        data = run.data
        e = embed_split(run.method, data.split(args.split), data.eval_aug, run.device, run.cfg.data.eval_batch_size,
                        progress=not args.quiet)  # fmt: skip
        emb, labels = e.embeddings, e.labels.tolist()
        table = data.table
        ids = [table.paths[i] for i in e.indices] if table.paths else [int(i) for i in e.indices]
        source = {"split": args.split, "indices": e.indices.tolist()}
    out = args.out
    if out.endswith(".parquet"):
        _write_parquet(out, emb.numpy(), ids, labels)
        print(f"wrote {out} ({emb.shape[0]} × {emb.shape[1]})")
        return 0
    out = out if out.endswith(".npy") else out + ".npy"
    atomic_write_bytes(out, lambda f: np.save(f, emb.numpy()))
    write_json(out[:-4] + ".json", {"run_dir": str(args.run_dir), "checkpoint": args.checkpoint,
                                    "shape": list(emb.shape), "ids": ids, "labels": labels, **source})  # fmt: skip
    print(f"wrote {out} ({emb.shape[0]} × {emb.shape[1]}) and {out[:-4]}.json")
    return 0


def _report_bad(bad) -> None:
    if bad:
        print(f"deepmetric: skipped {len(bad)} unreadable image(s):", file=sys.stderr)
        for path, reason in bad[:20]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(bad) > 20:
            print(f"  … and {len(bad) - 20} more", file=sys.stderr)


def _write_parquet(out: str, emb, ids, labels) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise SystemExit("deepmetric embed: .parquet output needs pyarrow (pip install pyarrow), or use .npy") from e
    columns = {"id": [str(i) for i in ids], "embedding": [row.tolist() for row in emb]}
    if labels is not None:
        columns["label"] = [str(v) for v in labels]
    pq.write_table(pa.table(columns), out)


def cmd_export(args) -> int:
    import logging
    import warnings

    from .retrieval import load
    from .retrieval.export import export

    model = load(args.run_dir, args.checkpoint, "cpu")
    out = args.out or str(Path(args.run_dir) / f"model.{'onnx' if args.format == 'onnx' else 'pt'}")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape branches fixed by the load size
        meta = export(model, out, args.format, tolerance=args.tolerance)
    print(f"exported {out} ({args.format}); parity max |difference| = {meta['max_abs_difference']:.2e} "
          f"≤ {args.tolerance:g}; metadata {out}.json")  # fmt: skip
    return 0


def cmd_index(args) -> int:
    from .errors import ConfigError
    from .retrieval import EmbeddingIndex, load
    from .retrieval.index import warnings_to_stderr

    model = None
    if args.action == "build":
        if Path(args.out, "meta.json").exists():
            raise SystemExit(f"deepmetric index build: {args.out} already holds an index; use `index add`")
        model = load(args.run_dir, args.checkpoint, args.device)
        index, folder = _new_index(args, model), args.out
    else:
        if args.action == "add" and args.images is None and args.root is None:
            raise ConfigError("index add: give --images DIR|CSV (images to add) and/or --root DIR (the "
                              "folder the indexed images moved to, recorded in the index)")  # fmt: skip
        with warnings_to_stderr():
            index = EmbeddingIndex.load(args.index_dir, root=args.root)
        folder = args.index_dir
    change = ""
    if args.action == "delete":
        removed = index.delete(where=args.where) if args.where else index.delete(_ids_to_delete(args))
        change = f"deleted {len(removed)}; "
    elif args.images is not None:
        if model is None:
            model = load(index.model["run_dir"], index.model.get("checkpoint", "best"), args.device)
            index.check_model(model.source)
        emb, kept, labels, metadata = _embed_items(args.images, model, index, args.quiet)
        if args.action == "update":
            replaced, added = index.update(emb, kept, labels, paths=True, metadata=metadata)
            change = f"replaced {replaced}, added {added}; "
        else:
            index.add(emb, kept, labels, paths=True, metadata=metadata)
    index.save(folder)
    where = f" on Milvus ({index.location})" if index.backend == "milvus" else ""
    print(f"index {folder}: {change}{len(index)} images ({index.kind}, {index.dim}-d){where}")
    return 0


def _new_index(args, model):
    """An empty index for `index build`: local (faiss or torch) or Milvus (--backend milvus, or --uri)."""
    from .errors import ConfigError
    from .retrieval import EmbeddingIndex
    from .retrieval.index import faiss_available

    backend = args.backend or ("milvus" if args.uri else "local")
    params = {"nlist": args.nlist, "nprobe": args.nprobe, "hnsw_m": args.hnsw_m, "ef_search": args.ef_search}
    if backend == "milvus":
        from .retrieval.milvus import MilvusIndex

        if args.kind == "torch":
            raise ConfigError("--kind torch is a local index; a Milvus index is --kind flat, ivf or hnsw")
        return MilvusIndex(args.kind or "flat", model.dim, folder=args.out, uri=args.uri, model=model.source, **params)
    if args.uri:
        raise ConfigError(f"--uri {args.uri} is for --backend milvus; drop --uri, or use --backend milvus")
    kind = args.kind or ("flat" if faiss_available() else "torch")
    return EmbeddingIndex(kind, model.dim, model=model.source, **params)


def _embed_items(images: str, model, index, quiet: bool):
    """``(embeddings, paths, labels, metadata)`` of the readable images of a folder or CSV (CSV columns other than
    path and label are the metadata); unreadable ones are reported and skipped."""
    from .retrieval import list_items

    paths, labels, metadata = list_items(images)
    emb, kept, bad = model.embed_paths(paths, progress=not quiet)
    _report_bad(bad)
    position = {p: i for i, p in enumerate(paths)}
    if metadata is not None:
        metadata = [metadata[position[p]] for p in kept]
    if labels is not None:
        labels = [labels[position[p]] for p in kept]
        if len(index) and index.labels is None:
            print("deepmetric: the index has no labels, so the new images' labels are not stored", file=sys.stderr)
            labels = None
    return emb, kept, labels, metadata


def _ids_to_delete(args) -> list[str]:
    """The ids of `index delete`: --ids, and the lines of --ids-from (blank lines and # comments skipped)."""
    from .errors import ConfigError

    ids = list(args.ids or [])
    if args.ids_from:
        try:
            text = Path(args.ids_from).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"--ids-from {args.ids_from}: cannot read it ({e.strerror or e})") from e
        ids += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise ConfigError("index delete: give --ids ID ..., --ids-from FILE (one id per line) or --where FILTER")
    return ids


def cmd_search(args) -> int:
    import warnings

    from .errors import ConfigError
    from .retrieval import EmbeddingIndex, load
    from .retrieval.index import IncompleteResultsWarning, warnings_to_stderr
    from .retrieval.matching import Match, decide, matching_rule

    with warnings_to_stderr():
        index = EmbeddingIndex.load(args.index_dir, root=args.root)
    k = index.check_k(args.k)
    if args.nprobe is not None:
        if index.kind != "ivf":
            raise ConfigError(f"--nprobe is for ivf indexes; {args.index_dir} is a {index.kind} index: drop --nprobe")
        if not 1 <= args.nprobe <= index.params["nlist"]:
            raise ConfigError(f"--nprobe {args.nprobe}: give 1 ≤ nprobe ≤ {index.params['nlist']} (the index's nlist)")
        index.params["nprobe"] = args.nprobe
    model = load(index.model["run_dir"], index.model.get("checkpoint", "best"), args.device)
    index.check_model(model.source)
    threshold, calibration = matching_rule(model, args.threshold, required=args.match)
    emb, kept, bad = model.embed_paths(args.queries)  # an unreadable query is reported; the others are answered
    failed = dict(bad)
    want = min(k, index.count(args.where)) if args.where else k  # a bad filter fails here, before any search
    if args.where and not want:
        print(f"deepmetric: no indexed item matches --where {args.where!r}", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteResultsWarning)  # reported per query below
        answers = iter(index.query(emb.numpy(), k, where=args.where) if kept else [])
    entries = []
    for q in args.queries:
        if q in failed:
            entries.append({"query": q, "error": failed[q], "results": []})
            print(f"deepmetric: query failed: {failed[q]}", file=sys.stderr)
            continue
        hits = next(answers)
        entry = {"query": q, "k": k, "complete": len(hits) == want, "results": hits}
        if args.where:
            entry["where"], entry["matching"] = args.where, index.count(args.where)
        if threshold is not None and hits:  # the calibrated (or given) answer from the nearest hit
            entry["match"] = decide(hits, threshold, calibration).as_dict()
        if len(hits) < want:
            entry["warning"] = f"only {len(hits)} of k = {want} hits: {index.shortfall_advice()}"
            print(f"deepmetric: {q}: {entry['warning']}", file=sys.stderr)
        entries.append(entry)
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for entry in entries:
            print(entry["query"])
            if "error" in entry:
                print(f"  error: {entry['error']}")
            for rank, h in enumerate(entry["results"], 1):
                label = f"  [{h['label']}]" if "label" in h else ""
                extra = "".join(f"  {key}={value}" for key, value in (h.get("metadata") or {}).items())
                print(f"  {rank:3d}. {h['distance']:.4f}  {h['id']}{label}{extra}")
            if "match" in entry:
                print(f"  {Match(**entry['match'])}")
    if failed:
        print(f"deepmetric: {sum(q in failed for q in args.queries)} of {len(args.queries)} queries failed",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def cmd_serve(args) -> int:
    import warnings

    from PIL import Image

    from .retrieval.serve import make_server

    # the server checks --max-pixels from each header itself; Pillow's warning above 89 MP would only be log noise
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    server = make_server(args.index_dir, args.host, args.port, args.max_upload_mb, args.device,
                         max_pixels=int(args.max_pixels), timeout=args.timeout, max_concurrent=args.max_concurrent,
                         queue_wait=args.queue_wait, max_connections=args.max_connections,
                         allow_hosts=args.allow_host, root=args.root, threshold=args.threshold)  # fmt: skip
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    print(f"deepmetric: serving {args.index_dir} on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_calibrate(args) -> int:
    from .retrieval.matching import CALIBRATION_FILE, calibrate_run

    record = calibrate_run(args.run_dir, args.target, checkpoint=args.checkpoint, images=args.images,
                           device=args.device, progress=not args.quiet)  # fmt: skip
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    on = record["calibrated_on"]
    where = "the validation split" if "split" in on else on["images"]
    a = record["achieved"]
    print(f"threshold {record['threshold']:.4f} for {record['target']} on {where} ({record['num_items']} images, "
          f"{record['num_classes']} labels, checkpoint {record['checkpoint']})")  # fmt: skip
    print(f"  nearest-neighbour matching: precision {a['precision']:.4f}, recall {a['recall']:.4f}, "
          f"F1 {a['f1']:.4f}, {a['accepted']:.1%} of queries answered 'match'")  # fmt: skip
    print(f"  pairs: false match rate {a['fmr']:.2e}, false non-match rate {a['fnmr']:.4f}")
    print(f"written: {Path(args.run_dir) / CALIBRATION_FILE}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .run import load_run

    print(f"report: {write_report(args.run_dir, run=load_run(args.run_dir, args.checkpoint, args.device))}")
    return 0


CHECKPOINT_HELP = "which checkpoint: best (chosen on validation; default) or last"
DEVICE_HELP = "cpu, cuda, cuda:N, mps (default: auto)"
QUIET_HELP = "no progress bars"
OVERRIDES_HELP = "config overrides with dotted keys, e.g. train.max_steps=100 loss.name=multi_similarity"


def _run_dir_command(sub, name: str, help_text: str):
    p = sub.add_parser(name, help=help_text)
    p.add_argument("run_dir", help="a run directory written by `deepmetric train`")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help=CHECKPOINT_HELP)
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the run's)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    return p


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="deepmetric", description="Deep metric learning: train, evaluate, search.")
    parser.add_argument("--version", action="version", version=f"deepmetric {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description=(
            "Train from CONFIG with KEY=VALUE overrides (e.g. train.epochs=3 loss.name=multi_similarity). Writes "
            "config.yaml, log.jsonl, metrics.json, checkpoints/ and report.html into the run directory."
        ),
    )
    tr.add_argument("config", nargs="?", help="YAML config (see configs/)")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    tr.add_argument("--output", help="run directory (default runs/NAME-TIMESTAMP)")
    tr.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint with its own config.yaml; KEY=VALUE may change only the keys "
        "safe on resume (train.max_steps, train.epochs, intervals, device; see docs/training.md)",
    )
    tr.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --output (its files only) and start anew"
    )
    tr.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    tr.set_defaults(func=cmd_train)
    cp = sub.add_parser(
        "compare",
        help="compare runs: mean ± std over seeds of runs whose configs differ only in train.seed",
        description=(
            "Read the runs named by RUN (run directories, folders holding runs, or glob patterns), group those whose "
            "config.yaml files differ only in train.seed, and print mean ± std and n of each metric per group. "
            "Unfinished runs are listed but left out of the statistics; runs selected on test are flagged."
        ),
    )
    cp.add_argument("runs", nargs="+", metavar="RUN", help="run directories, folders holding runs, or glob patterns")
    cp.add_argument("--metrics", nargs="+", default=["recall@1", "map@r", "nmi"], metavar="METRIC",
                    help="metrics.json keys (default: recall@1 map@r nmi)")  # fmt: skip
    cp.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "baseline"),
        help="which metrics: test, val, or baseline (the model as built, on test; default test)",
    )
    cp.add_argument("--format", default="terminal", choices=("terminal", "markdown", "csv", "latex"),
                    help="table format (default terminal)")  # fmt: skip
    cp.add_argument("--plot", metavar="FILE", help="also draw each group's validation curve (.png or .html)")
    cp.add_argument("--plot-metric", metavar="METRIC", help="the curve's metric (default: the first of --metrics)")
    cp.set_defaults(func=cmd_compare)
    ml = sub.add_parser(
        "mlrc",
        help="the MLRC protocol: k class-disjoint folds, mean and concatenated-ensemble test metrics",
        description=(
            "Train CONFIG once per class-disjoint fold of the training classes (validation on the held-out fold), "
            "then report precision@1, r_precision and map@r on the test split as the mean over the fold models and "
            "for their concatenated embedding. Writes OUTPUT/fold{k}/, OUTPUT/mlrc.json and OUTPUT/mlrc.md; rerunning "
            "reuses finished folds and resumes interrupted ones."
        ),
    )
    ml.add_argument("config", help="YAML config (see configs/mlrc)")
    ml.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    ml.add_argument("--output", required=True, help="directory for the fold runs and the summary")
    ml.add_argument("--folds", type=int, default=4, help="number of class-disjoint folds (default 4)")
    ml.add_argument("--only", type=int, nargs="+", metavar="K", help="train only these folds (aggregate those)")
    ml.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    ml.set_defaults(func=cmd_mlrc)
    ev = _run_dir_command(sub, "evaluate", "evaluate a run's checkpoint on a split")
    ev.add_argument("--split", choices=["val", "test"], default="test", help="the split to score (default test)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument(
        "--verification",
        action="store_true",
        help="add pair verification metrics over all same-class vs different-class pairs of the split: "
        "ROC AUC, EER, best F1 and FNMR@FMR for FMR 1e-1 … 1e-4 (with the ROC curve in --json)",
    )
    ev.add_argument("--max-pairs", type=int, metavar="N",
                    help="with --verification: estimate from a seeded sample of N pairs when the split has more "
                         "(default: exact over all pairs)")  # fmt: skip
    ev.set_defaults(func=cmd_evaluate)
    em = _run_dir_command(sub, "embed", "embed images (a folder or CSV) or a split of the run's dataset")
    em.add_argument("--images", help="a folder (flat, or one sub-folder per class) or a CSV with path,label")
    em.add_argument("--split", choices=["train", "val", "test"], help="embed this split of the run's dataset")
    em.add_argument("--out", required=True, help="output .npy (+ .json sidecar with ids and labels) or .parquet")
    em.set_defaults(func=cmd_embed)
    ex = _run_dir_command(sub, "export", "export the model to ONNX or TorchScript, with a parity check")
    ex.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="file format (default onnx)")
    ex.add_argument("--out", help="output file (default RUN_DIR/model.onnx or model.pt)")
    ex.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |difference| to PyTorch")
    ex.set_defaults(func=cmd_export)
    ix = sub.add_parser("index", help="build, extend, update or prune a search index of images")
    ix_sub = ix.add_subparsers(dest="action", required=True)
    ib = ix_sub.add_parser("build", help="embed images with a run's model and index them")
    ib.add_argument("run_dir", help="a run directory written by `deepmetric train`")
    ib.add_argument("--images", required=True,
                    help="a folder or a CSV with path,label (other columns: metadata, for search --where)")  # fmt: skip
    ib.add_argument("--out", required=True, help="index directory to create")
    ib.add_argument("--checkpoint", choices=["best", "last"], default="best", help=CHECKPOINT_HELP)
    ib.add_argument(
        "--kind", choices=["flat", "ivf", "hnsw", "torch"], help="default flat (faiss), torch without faiss"
    )
    ib.add_argument("--nlist", type=int, help="ivf: number of cells (default 4·sqrt(N))")
    ib.add_argument("--nprobe", type=int, default=16, help="ivf: cells searched per query")
    ib.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links per node")
    ib.add_argument("--ef-search", type=int, default=64, help="hnsw: search breadth")
    ib.add_argument("--backend", choices=["local", "milvus"],
                    help="local (faiss/torch files in the index directory; the default) or milvus (Milvus Lite: "
                         "INDEX/milvus.db, or the Milvus server of --uri)")  # fmt: skip
    ib.add_argument("--uri", help="milvus: a Milvus server (http://host:19530) instead of the Milvus Lite file; "
                                  "implies --backend milvus")  # fmt: skip
    ia = ix_sub.add_parser("add", help="embed more images into an existing index (same model)")
    ia.add_argument("index_dir", help="an index directory made by `deepmetric index build`")
    ia.add_argument("--images", help="images to add: a folder or a CSV with path,label")
    ia.add_argument("--root", help="the folder the indexed images moved to (recorded in the index)")
    iu = ix_sub.add_parser("update", help="re-embed images: replace the indexed items with these ids, add the others")
    iu.add_argument("index_dir", help="an index directory made by `deepmetric index build`")
    iu.add_argument("--images", required=True, help="a folder or a CSV with path,label (+ metadata columns)")
    iu.add_argument("--root", help="the folder the indexed images moved to (recorded in the index)")
    idl = ix_sub.add_parser("delete", help="remove items by id (as search reports them) or by a --where filter")
    idl.add_argument("index_dir", help="an index directory made by `deepmetric index build`")
    which = idl.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", nargs="+", metavar="ID", help="ids to remove (image paths, as search prints them)")
    which.add_argument("--ids-from", metavar="FILE", help="a file of ids to remove, one per line (# comments)")
    which.add_argument("--where", metavar="FILTER", help="remove the items matching this filter (see search --where)")
    idl.add_argument("--root", help="the folder the indexed images moved to (recorded in the index)")
    for p in (ib, ia, iu):
        p.add_argument("--device", help=DEVICE_HELP)
        p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    ix.set_defaults(func=cmd_index)
    se = sub.add_parser("search", help="nearest indexed images of query images")
    se.add_argument("index_dir", help="an index directory made by `deepmetric index build`")
    se.add_argument("queries", nargs="+", metavar="QUERY_IMAGE", help="image files to search with")
    se.add_argument("-k", type=int, default=10, help="neighbours per query, 1 to the number of indexed images")
    se.add_argument("--json", action="store_true", help="print the hits as JSON")
    se.add_argument("--root", help="the folder the indexed images moved to (default: where the index records them)")
    se.add_argument("--nprobe", type=int, help="ivf: cells searched per query (default: the index's)")
    se.add_argument("--where", metavar="FILTER",
                    help="only items matching this filter, e.g. \"category == 'shoes' and price < 50\" (fields: "
                         "metadata columns, label, id; == != < <= > >= in [...] not in [...] and or not)")  # fmt: skip
    se.add_argument("--threshold", type=float,
                    help="answer match / no match with this distance threshold (default: the run's calibrated one, "
                         "when `deepmetric calibrate` made one)")  # fmt: skip
    se.add_argument(
        "--match",
        action="store_true",
        help="require a match answer: fail when the run has no calibration and no --threshold is given",
    )
    se.add_argument("--device", help=DEVICE_HELP)
    se.set_defaults(func=cmd_search)
    sv = sub.add_parser("serve", help="a local web page to search an index with an image")
    sv.add_argument("index_dir", help="an index directory made by `deepmetric index build`")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    sv.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload (413 above; default 10)")
    sv.add_argument("--max-pixels", type=float, default=40e6,
                    help="largest image, width × height, read before decoding (413 above; default 40e6)")  # fmt: skip
    sv.add_argument("--timeout", type=float, default=30.0,
                    help="seconds for each socket read or write and for a whole upload (default 30)")  # fmt: skip
    sv.add_argument("--max-concurrent", type=int, default=16, help="searches run at once (default 16)")
    sv.add_argument("--queue-wait", type=float, default=5.0,
                    help="seconds a search waits for a free slot before 503 + Retry-After (default 5)")  # fmt: skip
    sv.add_argument("--max-connections", type=int, default=64,
                    help="open connections; one more gets 503 at once (default 64)")  # fmt: skip
    sv.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="also answer requests for this Host name (repeatable; '*': any; default: the bound "
                    "address and localhost)")  # fmt: skip
    sv.add_argument("--root", help="the folder the indexed images moved to (default: where the index records them)")
    sv.add_argument("--threshold", type=float, metavar="DISTANCE",
                    help="answer match / no match at this distance (default: the run's `deepmetric calibrate` "
                         "threshold, if any)")  # fmt: skip
    sv.add_argument("--device", help=DEVICE_HELP)
    sv.set_defaults(func=cmd_serve)
    ca = _run_dir_command(sub, "calibrate", "choose the match threshold on the validation split (or --images)")
    ca.add_argument("--target", default="precision=0.95", metavar="TARGET",
                    help="precision=P (the most matches whose label is right with precision ≥ P; default "
                         "precision=0.95), fmr=Q (a fraction Q of different-label pairs matched), or f1")  # fmt: skip
    ca.add_argument("--images", help="calibrate on these labelled images (class sub-folders, or a CSV with "
                                     "path,label) instead of the run's validation split")  # fmt: skip
    ca.add_argument("--json", action="store_true", help="print the calibration record as JSON")
    ca.set_defaults(func=cmd_calibrate)
    rp = _run_dir_command(sub, "report", "(re)write a run's report.html")
    rp.set_defaults(func=cmd_report)
    ds = sub.add_parser("datasets", help="list the datasets, or summarise and check one")
    ds.add_argument("action", choices=["list", "info"], help="list: the registered datasets; info: check one")
    ds.add_argument("name", nargs="?", help="dataset name (info)")
    ds.add_argument("--root", help="the dataset's folder (or CSV file)")
    ds.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="loader option, repeatable")
    ds.add_argument("--decode", action="store_true", help="also decode every image (slow), not only check it exists")
    ds.add_argument("--quiet", action="store_true", help="no progress bar")
    ds.set_defaults(func=cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":  # KEY=VALUE overrides may also follow the options
        bad = [e for e in extra if e.startswith("-") or "=" not in e]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("deepmetric: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line naming what went wrong; --debug shows the traceback
        if args.debug:
            raise
        print(f"deepmetric: {_one_line(e)}", file=sys.stderr)
        return _exit_code(e)


def _exit_code(e: Exception) -> int:
    """2 for bad input (deepmetric's input errors, missing files, bad values, a missing optional package), 1 for a
    failure at run time (deepmetric's run-time errors, and anything unexpected)."""
    from .errors import DeepMetricError

    if isinstance(e, DeepMetricError):
        return e.exit_code
    return 2 if isinstance(e, FileNotFoundError | ValueError | ImportError) else 1


def _one_line(e: Exception) -> str:
    """The error's message on one line; an unexpected one is prefixed with its type and points to --debug."""
    from .errors import DeepMetricError

    parts = [part.strip() for part in str(e).splitlines() if part.strip()]
    joints = [" " if p.endswith(":") else "; " for p in parts[:-1]]  # "Tried, in order: a; b" for a listed message
    message = "".join(p + j for p, j in zip(parts, [*joints, ""], strict=True)) or type(e).__name__
    if isinstance(e, DeepMetricError | FileNotFoundError | ValueError | ImportError):
        return message
    return f"{type(e).__name__}: {message} (run again with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
