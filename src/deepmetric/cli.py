"""The ``deepmetric`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parse_options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"deepmetric: --option expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


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
    from . import distributed

    run_dir, metrics = train(args.config, list(args.overrides), output=args.output, resume=args.resume,
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
    shown = {k: v for k, v in metrics.items() if not k.startswith("num_")}
    print(f"{split} metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))


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

    metrics = load_run(args.run_dir, args.checkpoint, args.device).evaluate(args.split, progress=not args.quiet)
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
    from .retrieval import EmbeddingIndex, list_images, load
    from .retrieval.index import faiss_available

    if args.action == "build":
        if Path(args.out, "meta.json").exists():
            raise SystemExit(f"deepmetric index build: {args.out} already holds an index; use `index add`")
        model = load(args.run_dir, args.checkpoint, args.device)
        kind = args.kind or ("flat" if faiss_available() else "torch")
        index = EmbeddingIndex(kind, model.dim, model=model.source, nlist=args.nlist, nprobe=args.nprobe,
                               hnsw_m=args.hnsw_m, ef_search=args.ef_search)  # fmt: skip
        folder = args.out
    else:
        index = EmbeddingIndex.load(args.index_dir)
        model = load(index.model["run_dir"], index.model.get("checkpoint", "best"), args.device)
        index.check_model(model.source)
        folder = args.index_dir
    paths, labels = list_images(args.images)
    emb, kept, bad = model.embed_paths(paths, progress=not args.quiet)
    _report_bad(bad)
    if labels is not None:
        position = {p: i for i, p in enumerate(paths)}
        labels = [labels[position[p]] for p in kept]
        if len(index) and index.labels is None:
            print("deepmetric: the index has no labels, so the new images' labels are not stored", file=sys.stderr)
            labels = None
    index.add(emb, kept, labels)
    index.save(folder)
    print(f"index {folder}: {len(index)} images ({index.kind}, {index.dim}-d)")
    return 0


def cmd_search(args) -> int:
    from .retrieval import EmbeddingIndex, load

    index = EmbeddingIndex.load(args.index_dir)
    model = load(index.model["run_dir"], index.model.get("checkpoint", "best"), args.device)
    index.check_model(model.source)
    emb = model.embed(args.queries)
    results = index.query(emb.numpy(), args.k)
    if args.json:
        print(json.dumps([{"query": q, "results": r} for q, r in zip(args.queries, results, strict=True)], indent=2))
        return 0
    for q, hits in zip(args.queries, results, strict=True):
        print(q)
        for rank, h in enumerate(hits, 1):
            label = f"  [{h['label']}]" if "label" in h else ""
            print(f"  {rank:3d}. {h['distance']:.4f}  {h['id']}{label}")
    return 0


def cmd_serve(args) -> int:
    from .retrieval.serve import make_server

    server = make_server(args.index_dir, args.host, args.port, args.max_upload_mb, args.device)
    host, port = server.server_address[:2]
    print(f"deepmetric: serving {args.index_dir} on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .run import load_run

    print(f"report: {write_report(args.run_dir, run=load_run(args.run_dir, args.checkpoint, args.device))}")
    return 0


def _run_dir_command(sub, name: str, help_text: str):
    p = sub.add_parser(name, help=help_text)
    p.add_argument("run_dir", help="a run directory written by `deepmetric train`")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the run's)")
    p.add_argument("--quiet", action="store_true")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepmetric", description="Deep metric learning: train, evaluate, search.")
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
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    tr.add_argument("--output", help="run directory (default runs/NAME-TIMESTAMP)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train)
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
    ml.add_argument("config")
    ml.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    ml.add_argument("--output", required=True, help="directory for the fold runs and the summary")
    ml.add_argument("--folds", type=int, default=4)
    ml.add_argument("--only", type=int, nargs="+", metavar="K", help="train only these folds (aggregate those)")
    ml.add_argument("--quiet", action="store_true")
    ml.set_defaults(func=cmd_mlrc)
    ev = _run_dir_command(sub, "evaluate", "evaluate a run's checkpoint on a split")
    ev.add_argument("--split", choices=["val", "test"], default="test")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_evaluate)
    em = _run_dir_command(sub, "embed", "embed images (a folder or CSV) or a split of the run's dataset")
    em.add_argument("--images", help="a folder (flat, or one sub-folder per class) or a CSV with path,label")
    em.add_argument("--split", choices=["train", "val", "test"])
    em.add_argument("--out", required=True, help="output .npy (+ .json sidecar with ids and labels) or .parquet")
    em.set_defaults(func=cmd_embed)
    ex = _run_dir_command(sub, "export", "export the model to ONNX or TorchScript, with a parity check")
    ex.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    ex.add_argument("--out", help="output file (default RUN_DIR/model.onnx or model.pt)")
    ex.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |difference| to PyTorch")
    ex.set_defaults(func=cmd_export)
    ix = sub.add_parser("index", help="build or extend a search index of images")
    ix_sub = ix.add_subparsers(dest="action", required=True)
    ib = ix_sub.add_parser("build", help="embed images with a run's model and index them")
    ib.add_argument("run_dir")
    ib.add_argument("--images", required=True, help="a folder or a CSV with path,label")
    ib.add_argument("--out", required=True, help="index directory to create")
    ib.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ib.add_argument(
        "--kind", choices=["flat", "ivf", "hnsw", "torch"], help="default flat (faiss), torch without faiss"
    )
    ib.add_argument("--nlist", type=int, help="ivf: number of cells (default 4·sqrt(N))")
    ib.add_argument("--nprobe", type=int, default=16, help="ivf: cells searched per query")
    ib.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links per node")
    ib.add_argument("--ef-search", type=int, default=64, help="hnsw: search breadth")
    ia = ix_sub.add_parser("add", help="embed more images into an existing index (same model)")
    ia.add_argument("index_dir")
    ia.add_argument("--images", required=True)
    for p in (ib, ia):
        p.add_argument("--device")
        p.add_argument("--quiet", action="store_true")
    ix.set_defaults(func=cmd_index)
    se = sub.add_parser("search", help="nearest indexed images of query images")
    se.add_argument("index_dir")
    se.add_argument("queries", nargs="+", metavar="QUERY_IMAGE")
    se.add_argument("-k", type=int, default=10)
    se.add_argument("--json", action="store_true")
    se.add_argument("--device")
    se.set_defaults(func=cmd_search)
    sv = sub.add_parser("serve", help="a local web page to search an index with an image")
    sv.add_argument("index_dir")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-upload-mb", type=float, default=10.0)
    sv.add_argument("--device")
    sv.set_defaults(func=cmd_serve)
    rp = _run_dir_command(sub, "report", "(re)write a run's report.html")
    rp.set_defaults(func=cmd_report)
    ds = sub.add_parser("datasets", help="list the datasets, or summarise and check one")
    ds.add_argument("action", choices=["list", "info"])
    ds.add_argument("name", nargs="?", help="dataset name (info)")
    ds.add_argument("--root", help="the dataset's folder (or CSV file)")
    ds.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="loader option, repeatable")
    ds.add_argument("--decode", action="store_true", help="also decode every image (slow), not only check it exists")
    ds.add_argument("--quiet", action="store_true", help="no progress bar")
    ds.set_defaults(func=cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import DeepMetricError

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
    except DeepMetricError as e:  # bad input (2) or a checked run-time condition such as a parity failure (1)
        print(f"deepmetric: {e}", file=sys.stderr)
        return e.exit_code
    except FileNotFoundError as e:
        print(f"deepmetric: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # unknown names and bad values, with their closest valid names
        print(f"deepmetric: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
