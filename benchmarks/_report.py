"""Shared by the benchmark scripts: the exact command line and printing / appending a markdown result."""

from __future__ import annotations

import shlex
import statistics
import sys


def command_line() -> str:
    """The command that produced a result, as recorded beside it: ``python benchmarks/X.py ...`` for a script,
    ``python -m benchmarks.X ...`` for a module (whose ``sys.argv[0]`` is the file's absolute path), quoted for a
    shell where an argument needs it."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = ["-m", spec.name] if spec is not None and spec.name else sys.argv[:1]
    return f"`{shlex.join(['python', *program, *sys.argv[1:]])}`"


def emit(lines: list[str], write: str | None) -> str:
    """Print the markdown ``lines`` and append them (and a blank line) to ``write`` when given."""
    text = "\n".join(lines)
    print(text)
    if write:
        with open(write, "a") as f:
            f.write(text + "\n\n")
    return text


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` with three decimals (std 0 for a single value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


# settings that change where a run computes, not what: a run made on a GPU is reused (or resumed) on a CPU
NEUTRAL = ("train.device", "data.workers", "eval.memory_budget")


def config_differences(stored: dict, wanted: dict, prefix: str = "") -> list[str]:
    """``key: stored → wanted`` for every setting of ``stored`` that ``wanted`` gives another value (keys only one of
    them has are skipped: a setting added to the schema after a run was made; so are the `NEUTRAL` ones)."""
    out = []
    for key, value in stored.items():
        if key not in wanted or f"{prefix}{key}" in NEUTRAL:
            continue
        if isinstance(value, dict) and isinstance(wanted[key], dict) and value and wanted[key]:
            out += config_differences(value, wanted[key], f"{prefix}{key}.")
        elif value != wanted[key]:
            out.append(f"{prefix}{key}: {value!r} → {wanted[key]!r}")
    return out


def train_once(preset, overrides: dict, run_dir) -> dict:
    """Train ``preset`` into ``run_dir`` (resuming an interrupted run, reusing a finished one); its metrics.json.

    A run is only reused or resumed when it was made with the settings asked for: otherwise this stops and names the
    settings that differ, instead of passing off a run made for another study as this one."""
    import json
    import shutil
    from pathlib import Path

    import yaml

    import deepmetric
    from deepmetric.config import load_config, parse_overrides, to_yaml
    from deepmetric.training.resume import resume_safe

    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():
        wanted = yaml.safe_load(to_yaml(load_config(preset, parse_overrides(overrides))))
        stored = yaml.safe_load((run_dir / "config.yaml").read_text())
        if differences := config_differences(stored, wanted):
            raise SystemExit(f"{run_dir} was made with other settings ({'; '.join(differences)}): use another --runs "
                             "folder, or delete the run to retrain it")  # fmt: skip
    if (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text())
    if (run_dir / "checkpoints" / "last.pt").is_file():  # continued with its own config.yaml (checked above)
        safe = {k: v for k, v in overrides.items() if resume_safe(k.replace("__", "."))}
        return deepmetric.train(None, output=run_dir, resume=run_dir, quiet=True, **safe)[1]
    if run_dir.is_dir():  # killed before its first checkpoint: nothing to continue
        shutil.rmtree(run_dir)
    return deepmetric.train(preset, output=run_dir, quiet=True, **overrides)[1]


def add_study_arguments(ap, runs: str) -> None:
    """The options every multi-seed study shares: seeds, glyph build, run folder, config overrides, output file,
    regime (benchmarks/_regime.py) and runs at once."""
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--glyphs", default="~/.cache/deepmetric/glyphs", help="root of a glyph benchmark build")
    ap.add_argument("--glyph-fonts", type=int, default=160, help="glyphs: images of this many fonts (0: all 686)")
    ap.add_argument("--runs", default=runs, help="run folder (finished runs are reused: use a new one per --set)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    ap.add_argument("--write", help="append the result to this markdown file")
    ap.add_argument("--regime", choices=("preset", "pretrained"), default="preset",
                    help="preset: the presets' own network and budget (the recorded tables); pretrained: every run "
                    "from the ImageNet-pretrained EfficientNet-Lite0 of configs/demo.yaml, checkpoint chosen on "
                    "held-out training classes (benchmarks/_regime.py)")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each process when --jobs > 1")


def overrides_from(items: list[str]) -> dict:
    """``["train.epochs=2", ...]`` → ``{"train__epochs": "2", ...}`` (the keyword form `deepmetric.train` takes),
    checked by the library's one parser (`deepmetric.config.parse_overrides`: KEY=VALUE or a clear error)."""
    from deepmetric.config import parse_overrides

    return {key.replace(".", "__"): value for key, _, value in (o.partition("=") for o in parse_overrides(items))}


def untrained_overrides(overrides: dict) -> dict:
    """``overrides`` for a run that evaluates the network as initialised (or as loaded from ``model.weights``):
    one step at learning rate 1e-12, since a run needs a step; what a method adds is measured against it."""
    return {**overrides, "train__max_steps": 1, "optim__lr": 1e-12}


def median_step_times(methods: dict, batches: list[dict], steps: int, repeats: int) -> dict[str, float]:
    """Median seconds of one training step (forward, loss, backward, optimiser step, ``on_step_end``) for each
    ``name: (method, optimiser)``; the methods alternate ``repeats`` times in this process, ``steps`` steps each
    (the first two of each block are warm-up), so machine noise hits them alike."""
    import time

    results = {name: [] for name in methods}
    for _ in range(repeats):
        for name, (method, opt) in methods.items():
            method.train()
            times = []
            for i in range(steps):
                t0 = time.perf_counter()
                out = method.training_step(batches[i % len(batches)])
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
                method.on_step_end(i + 1)
                times.append(time.perf_counter() - t0)
            results[name].append(statistics.median(times[2:]))
    return {name: statistics.median(v) for name, v in results.items()}
