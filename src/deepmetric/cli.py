"""The ``deepmetric`` command line."""

from __future__ import annotations

import argparse
import json
import sys


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

    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"deepmetric train: overrides are KEY=VALUE, got {item!r}")
        overrides[key.replace(".", "__")] = value
    if args.resume is None and args.config is None:
        raise SystemExit("deepmetric train: give a CONFIG file (e.g. configs/demo.yaml) or --resume RUN_DIR")
    run_dir, metrics = train(args.config, output=args.output, resume=args.resume, quiet=args.quiet, **overrides)
    _print_metrics("test", metrics["test"])
    print(f"run directory: {run_dir}")
    print(f"report: {run_dir / 'report.html'}")
    return 0


def _print_metrics(split: str, metrics: dict) -> None:
    shown = {k: v for k, v in metrics.items() if not k.startswith("num_")}
    print(f"{split} metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))


def cmd_evaluate(args) -> int:
    from .api import load_trainer

    trainer = load_trainer(args.run_dir, args.checkpoint, args.device)
    metrics = trainer.evaluate(args.split, progress=not args.quiet)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_metrics(args.split, metrics)
    return 0


def cmd_embed(args) -> int:
    import numpy as np

    from .api import load_trainer
    from .training.checkpoint import atomic_write_bytes, write_json
    from .training.evaluate import embed_split

    trainer = load_trainer(args.run_dir, args.checkpoint, args.device)
    dataset = {"train": trainer.train_set, "val": trainer.val_set, "test": trainer.test_set}[args.split]
    if dataset is None:
        raise SystemExit(f"deepmetric embed: the run has no {args.split} split")
    emb = embed_split(trainer.method, dataset, trainer.eval_aug, trainer.device, trainer.cfg.data.eval_batch_size,
                      progress=not args.quiet)  # fmt: skip
    out = args.out if args.out.endswith(".npy") else args.out + ".npy"
    atomic_write_bytes(out, lambda f: np.save(f, emb.embeddings.numpy()))
    table = trainer.table
    write_json(out[:-4] + ".json", {
        "run_dir": str(args.run_dir), "checkpoint": args.checkpoint, "split": args.split,
        "shape": list(emb.embeddings.shape), "labels": emb.labels.tolist(), "indices": emb.indices.tolist(),
        "ids": [table.paths[i] for i in emb.indices] if table.paths else emb.indices.tolist(),
    })  # fmt: skip
    print(f"wrote {out} ({emb.embeddings.shape[0]} × {emb.embeddings.shape[1]}) and {out[:-4]}.json")
    return 0


def cmd_report(args) -> int:
    from .api import load_trainer
    from .report import write_report

    trainer = load_trainer(args.run_dir, args.checkpoint, args.device)
    print(f"report: {write_report(args.run_dir, trainer)}")
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
    ev = _run_dir_command(sub, "evaluate", "evaluate a run's checkpoint on a split")
    ev.add_argument("--split", choices=["val", "test"], default="test")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_evaluate)
    em = _run_dir_command(sub, "embed", "embed a split of the run's dataset")
    em.add_argument("--split", choices=["train", "val", "test"], default="test")
    em.add_argument("--out", required=True, help="output .npy (a .json sidecar holds labels and ids)")
    em.set_defaults(func=cmd_embed)
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
    from .config import ConfigError

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
    except (ConfigError, FileNotFoundError) as e:
        print(f"deepmetric: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # unknown names and bad values, with their closest valid names
        print(f"deepmetric: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
