"""Compare runs: group them by their resolved config minus the seed, and tabulate mean ± std over the seeds.

``deepmetric compare RUN_OR_GLOB ...`` reads each run's ``config.yaml``, ``metrics.json`` and ``log.jsonl`` (a
folder of runs stands for every run below it). Runs whose configs are equal except for ``train.seed`` form a group;
a group is labelled by the settings that tell it apart from the other groups. The table gives, per group and
metric, the mean ± sample standard deviation and n (the finished runs), in the terminal, Markdown, CSV or LaTeX.
Flags: ``unfinished`` (no metrics.json yet: left out of the statistics), ``selected on test``
(``train.select_split=test``: biased), ``single seed`` (no spread). ``plot_curves`` draws each group's validation
curve (mean and min–max band over its seeds) to a PNG or a self-contained HTML page.
"""

from __future__ import annotations

import csv
import glob
import html
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# what may differ inside a group: the seed, and settings that do not change what a run computes (where and how it
# ran, what it reported and where it was tracked); a name ending in "." stands for its section
IGNORED = ("train.seed", "train.device", "train.tensorboard", "data.workers", "eval.memory_budget", "report.", "log.")


def _ignored(key: str, ignore: tuple[str, ...]) -> bool:
    return any(key == i or (i.endswith(".") and key.startswith(i)) for i in ignore)


FORMATS = ("terminal", "markdown", "csv", "latex")


@dataclass
class RunInfo:
    """One run as read from its directory."""

    path: Path
    config: dict[str, object]  # flattened: {"loss.name": "contrastive", ...}
    metrics: dict | None  # metrics.json, None while the run is unfinished
    curve: list[dict] = field(default_factory=list)  # validation records of log.jsonl (baseline included)

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def selected_on_test(self) -> bool:
        return self.config.get("train.select_split") == "test" or bool((self.metrics or {}).get("warning"))


@dataclass
class Group:
    """Runs equal in every setting but the seed."""

    key: tuple
    runs: list[RunInfo]
    label: str = ""

    @property
    def finished(self) -> list[RunInfo]:
        return [r for r in self.runs if r.finished]


def _flatten(node, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in (node or {}).items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value and not full.endswith((".params", ".options")):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
    return out


def find_runs(patterns: list[str]) -> list[Path]:
    """Run directories (holding ``config.yaml``) named by ``patterns``: paths or globs; a folder that is not a run
    stands for the runs below it. An argument that matches nothing is an error naming it."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(Path(pattern).expanduser()))) or []
        if not matches:
            raise FileNotFoundError(f"no run matches {pattern!r} (give run directories, folders of runs, or globs)")
        for match in map(Path, matches):
            if (match / "config.yaml").is_file():
                found.append(match)
            elif match.is_dir():
                found += sorted(p.parent for p in match.rglob("config.yaml"))
    runs = list(dict.fromkeys(p.resolve() for p in found))
    if not runs:
        raise FileNotFoundError(f"no run directory (with a config.yaml) in {patterns}")
    return runs


def read_run(path: Path) -> RunInfo:
    try:
        config = _flatten(yaml.safe_load((path / "config.yaml").read_text()))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path / 'config.yaml'}: cannot read the run's config: {e}") from None
    metrics = None
    if (path / "metrics.json").is_file():
        try:
            metrics = json.loads((path / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path / 'metrics.json'}: cannot read: {e}") from None
    curve = []
    if (path / "log.jsonl").is_file():
        for line in (path / "log.jsonl").read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("type") == "eval" and record.get("split") != "test":
                curve.append(record)
    return RunInfo(path, config, metrics, curve)


def group_runs(runs: list[RunInfo], ignore: tuple[str, ...] = IGNORED) -> list[Group]:
    """Groups of runs equal in every setting but ``ignore``, labelled by what tells them apart, in first-seen order."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = tuple(sorted((k, str(v)) for k, v in run.config.items() if not _ignored(k, ignore) and k != "name"))
        groups.setdefault(key, Group(key, [])).runs.append(run)
    out = list(groups.values())
    if len(out) == 1:
        out[0].label = str(out[0].runs[0].config.get("name", out[0].runs[0].path.name))
        return out
    names = [str(g.runs[0].config.get("name")) for g in out]
    if len(set(names)) == len(names) and all(len({r.config.get("name") for r in g.runs}) == 1 for g in out):
        for g, name in zip(out, names, strict=True):  # distinct run names say it shortest
            g.label = name
        return out
    common = set.intersection(*(set(g.key) for g in out))
    for g in out:
        distinct = [f"{k}={v}" for k, v in g.key if (k, v) not in common]
        g.label = ", ".join(distinct) or str(g.runs[0].config.get("name"))
    return out


def _value(metrics: dict, split: str, metric: str) -> float | None:
    values = metrics.get(split, {}) if split != "baseline" else metrics.get("baseline", {}).get("test", {})
    value = values.get(metric)
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else None


def summarise(groups: list[Group], metrics: list[str], split: str = "test") -> list[dict]:
    """Per group: label, n (finished runs), ``{metric: (mean, std)}``, and its flags."""
    rows = []
    for g in groups:
        stats = {}
        for metric in metrics:
            values = [v for r in g.finished if (v := _value(r.metrics, split, metric)) is not None]
            if values:
                stats[metric] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        flags = []
        unfinished = len(g.runs) - len(g.finished)
        if unfinished:
            flags.append(f"{unfinished} unfinished")
        if any(r.selected_on_test for r in g.runs):
            flags.append("selected on test")
        if len(g.finished) == 1:
            flags.append("single seed")
        seeds = sorted(str(r.config.get("train.seed")) for r in g.finished)
        rows.append({"group": g.label, "n": len(g.finished), "seeds": seeds, "stats": stats, "flags": flags})
    return rows


def render(rows: list[dict], metrics: list[str], fmt: str = "terminal", digits: int = 3) -> str:
    """The table in ``fmt`` (terminal, markdown, csv, latex)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not one of {list(FORMATS)}")

    def cell(row, metric, pm="±"):
        if metric not in row["stats"]:
            return "–"
        mean, std = row["stats"][metric]
        return f"{mean:.{digits}f} {pm} {std:.{digits}f}"

    header = ["group", *metrics, "n", "flags"]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["group", *(x for m in metrics for x in (f"{m} mean", f"{m} std")), "n", "seeds", "flags"])
        for row in rows:
            values = [f"{v:.6f}" for m in metrics for v in (row["stats"].get(m) or (math.nan, math.nan))]
            writer.writerow([row["group"], *values, row["n"], " ".join(row["seeds"]), "; ".join(row["flags"])])
        return out.getvalue()
    if fmt == "latex":
        lines = [r"\begin{tabular}{l" + "r" * len(metrics) + "r}", r"\toprule",
                 " & ".join(_latex(h) for h in header[:-1]) + r" \\", r"\midrule"]  # fmt: skip
        for row in rows:
            cells = [_latex(row["group"]), *(cell(row, m, r"$\pm$") for m in metrics), str(row["n"])]
            lines.append(" & ".join(cells) + r" \\")
        flagged = [f"% {row['group']}: {'; '.join(row['flags'])}" for row in rows if row["flags"]]  # not in the table
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", *flagged])
    body = [[row["group"], *(cell(row, m) for m in metrics), str(row["n"]), "; ".join(row["flags"])] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(metrics) + 1) + "---|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *body, strict=True)]
    fmt_row = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths]), *map(fmt_row, body)])


def _latex(text: str) -> str:
    return "".join("\\" + ch if ch in "&%$#_{}" else ch for ch in str(text))


def plot_curves(groups: list[Group], metric: str, path: str | Path) -> Path:
    """Each group's validation ``metric`` against the step: the mean over its seeds and the min–max band (step 0 is
    the baseline). ``.png`` writes an image; ``.html`` a page with the image inline."""
    import base64

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix not in (".png", ".html"):
        raise ValueError(f"--plot {path}: give a .png or .html file")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for g in groups:
        by_step: dict[int, list[float]] = {}
        for run in g.runs:
            for record in run.curve:
                if isinstance(record.get(metric), int | float):
                    by_step.setdefault(int(record["step"]), []).append(float(record[metric]))
        if not by_step:
            continue
        steps = sorted(by_step)
        mean = [statistics.mean(by_step[s]) for s in steps]
        line = ax.plot(steps, mean, marker="o", ms=3, label=f"{g.label} (n={len(g.runs)})")[0]
        ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps],
                        color=line.get_color(), alpha=0.2)  # fmt: skip
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError(f"no validation records with {metric!r} in these runs' log.jsonl")
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        path.write_bytes(buffer.getvalue())
    else:
        image = base64.b64encode(buffer.getvalue()).decode()
        name = html.escape(metric, quote=True)
        path.write_text(f"<!doctype html><html lang='en'><meta charset='utf-8'><title>deepmetric compare: {name}"
                        f"</title><body><img alt='validation {name}' src='data:image/png;base64,{image}'></body>"
                        "</html>\n")  # fmt: skip
    return path


def compare(patterns: list[str], metrics: list[str], split: str = "test", fmt: str = "terminal") -> str:
    """The comparison table of the runs named by ``patterns`` (see the module docstring)."""
    groups = group_runs([read_run(p) for p in find_runs(patterns)])
    return render(summarise(groups, metrics, split), metrics, fmt)
