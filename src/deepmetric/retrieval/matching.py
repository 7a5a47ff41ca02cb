"""Calibrated matching: a run's distance threshold (``deepmetric calibrate``) turns nearest neighbours into answers.

``calibrate_run`` embeds the run's validation split (or labelled images the user gives), chooses the threshold for a
target (`deepmetric.evaluation.calibration`) and writes ``RUN/calibration.json`` atomically, with the checkpoint's
SHA-256: a calibration is only used with the weights it was made for. `decide` answers one query from its nearest
indexed item: "match" (the item's label and id, the distance, the calibrated confidence) when the distance is within
the threshold, else "no match". `EmbeddingModel.match`, ``deepmetric search``, ``deepmetric serve`` and the exported
model's metadata all read the same file.

What a calibration promises (docs/matching.md): on queries and a gallery like the calibration set, the fraction of
"match" answers that name the right label is the precision it reports (and, for an ``fmr`` target, the fraction of
different-label pairs within the threshold is the FMR); it was measured there, leave-one-out, on classes the model
did not train on when the run's validation split holds out classes. A much larger gallery brings nearer wrong
neighbours, so precision falls: calibrate on a set of the size and kind you search.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError
from ..evaluation.calibration import Target, calibrate, read_confidence

CALIBRATION_FILE = "calibration.json"
FORMAT = 1
_REQUIRED = ("format", "target", "threshold", "checkpoint", "checkpoint_sha256", "confidence_curve", "achieved")


@dataclass(frozen=True)
class Match:
    """One query's answer: ``matched`` with the nearest item's ``label`` and ``id``, or not (they still name the
    nearest item); ``confidence`` is the calibrated probability that the label is right (None without calibration)."""

    matched: bool
    label: object
    id: str | None
    distance: float
    confidence: float | None
    threshold: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        conf = "" if self.confidence is None else f", confidence {self.confidence:.2f}"
        if self.matched:
            return f"match: {self.label} (distance {self.distance:.4f}{conf}; {self.id})"
        return f"no match (nearest {self.id} at distance {self.distance:.4f} > threshold {self.threshold:.4f}{conf})"


class Calibration:
    """A run's ``calibration.json``: the threshold, what it achieved, and the confidence curve."""

    def __init__(self, record: dict, path: Path | None = None):
        self.record, self.path = record, path
        self.threshold = float(record["threshold"])
        self.target = record["target"]

    def confidence(self, distance: float) -> float:
        return float(read_confidence(self.record["confidence_curve"], distance))

    def decide(self, hits: list[dict]) -> Match | None:
        """The answer for a query's hits (best first); None when there are none (an empty filtered result)."""
        return decide(hits, self.threshold, self)

    def summary(self) -> dict:
        """What a reader of search results needs: threshold, target, split and the achieved rates."""
        keys = ("threshold", "target", "calibrated_on", "checkpoint", "achieved", "created")
        return {k: self.record[k] for k in keys if k in self.record}


def decide(hits: list[dict], threshold: float, calibration: Calibration | None = None) -> Match | None:
    """Match the nearest of ``hits`` (dicts with ``id``, ``distance`` and maybe ``label``) within ``threshold``."""
    if not hits:
        return None
    best = min(hits, key=lambda h: h["distance"])
    d = float(best["distance"])
    confidence = calibration.confidence(d) if calibration is not None else None
    return Match(d <= threshold, best.get("label"), best.get("id"), d, confidence, float(threshold))


def check_threshold(value) -> float:
    """A user-given distance threshold: a number in [0, 2] (distances of normalised embeddings)."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not 0.0 <= t <= 2.0:
        raise ConfigError(f"threshold {value!r}: give a distance in [0, 2] (embeddings are L2-normalised)")
    return t


def load_calibration(run_dir: str | Path, checkpoint_sha256: str | None = None, *, required: bool = True):
    """``run_dir``'s `Calibration` (checked to belong to the checkpoint with ``checkpoint_sha256`` when given).
    Missing: a `ConfigError` saying how to make one, or None when not ``required``."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        if not required:
            return None
        raise ConfigError(
            f"{run_dir} has no calibration ({path} is missing; runs trained before calibration existed have none): "
            f"run `deepmetric calibrate {run_dir}` first, or give a threshold"
        )
    try:
        record = json.loads(path.read_text())
        missing = [k for k in _REQUIRED if k not in record]
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{path} cannot be read ({e}): run `deepmetric calibrate {run_dir}` again") from e
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}: run `deepmetric calibrate {run_dir}` again")
    if record["format"] != FORMAT:
        raise ConfigError(f"{path}: calibration format {record['format']!r} is unknown to this deepmetric (it reads "
                          f"{FORMAT}); run `deepmetric calibrate {run_dir}` again")  # fmt: skip
    if checkpoint_sha256 and record["checkpoint_sha256"] != checkpoint_sha256:
        raise ConfigError(
            f"{path} was made for checkpoint {record['checkpoint']!r} (sha256 {record['checkpoint_sha256'][:12]}…), "
            f"not for the weights in use (sha256 {checkpoint_sha256[:12]}…): run `deepmetric calibrate {run_dir} "
            "--checkpoint NAME` for the checkpoint you search with"
        )
    return Calibration(record, path)


def matching_rule(model, threshold: float | None = None, *, required: bool = False):
    """``(threshold, calibration)`` for answering match / no match with ``model`` (an `EmbeddingModel`): the given
    threshold (with the run's confidence curve when it has a valid one), else the run's calibrated one; ``(None,
    None)`` when neither and not ``required`` (then a `ConfigError` saying how to calibrate). A calibration made for
    other weights is an error, unless a threshold was given."""
    if threshold is not None:
        calibration = None
        with contextlib.suppress(ConfigError):
            calibration = model.calibration(required=False)
        return check_threshold(threshold), calibration
    calibration = model.calibration(required=required)
    return (calibration.threshold, calibration) if calibration is not None else (None, None)


def calibrate_run(run_dir: str | Path, target: Target | str = "precision=0.95", *, checkpoint: str = "best",
                  images: str | None = None, device: str | None = None, progress: bool = False) -> dict:  # fmt: skip
    """Choose ``run_dir``'s match threshold on its validation split (or on the labelled ``images``: a folder with
    one sub-folder per class, or a CSV with path,label) and write ``calibration.json``; returns the record."""
    from ..training.checkpoint import write_json
    from .model import load

    target = Target.parse(target) if isinstance(target, str) else target
    model = load(run_dir, checkpoint, device)
    if images is not None:
        from .sources import list_images

        paths, labels = list_images(images)
        if labels is None:
            raise ConfigError(f"--images {images}: calibration needs labels (a folder of class sub-folders, or a "
                              "CSV with path,label)")  # fmt: skip
        emb, kept, bad = model.embed_paths(paths, progress=progress)
        position = {p: i for i, p in enumerate(paths)}
        labels = [labels[position[p]] for p in kept]
        on = {"images": str(images), "skipped": len(bad)}
    else:
        emb, labels = _validation_embeddings(run_dir, checkpoint, device, progress)
        on = {"split": "val"}
    if len(labels) < 2:
        raise ConfigError(f"{on}: {len(labels)} labelled image(s); calibration needs several per label")
    found = calibrate(emb, _label_codes(labels), target)
    record = {
        "format": FORMAT,
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": checkpoint,
        "checkpoint_sha256": model.source["checkpoint_sha256"],
        "calibrated_on": on,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **found,
    }
    write_json(Path(run_dir) / CALIBRATION_FILE, record)
    return record


def _validation_embeddings(run_dir, checkpoint: str, device, progress: bool):
    from ..run import load_run

    run = load_run(run_dir, checkpoint, device, dtype="float32")
    if run.data.val_set is None or len(run.data.val_set) == 0:
        raise ConfigError(f"{run_dir} has no validation split (protocol.val_by: none): calibrate on labelled images "
                          f"with `deepmetric calibrate {run_dir} --images DIR|CSV`")  # fmt: skip
    emb = run.embed("val", progress=progress)
    return emb.embeddings, emb.labels.tolist()


def _label_codes(labels) -> list[int]:
    """Integer codes of arbitrary labels (strings from a CSV, class ids from a split)."""
    codes: dict = {}
    return [codes.setdefault(v, len(codes)) for v in labels]
