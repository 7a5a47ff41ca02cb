"""Experiment trackers: where a run's records go besides ``log.jsonl``. One small interface, several backends.

A `Tracker` is opened with the run (``start``), receives every record the trainer logs (``log``: training steps and
evaluations, the same dicts as ``log.jsonl``), gets the run's final files (``finish``) and is closed (``close``).
Implementations: `JsonLog` (``log.jsonl``, always; a resume cuts it back to the checkpoint), `TensorBoardTracker`
(``train.tensorboard``) and `MLflowTracker` (``log.mlflow``); `deepmetric.training.logging.RunLog` dispatches to
them. Trackers run on rank 0 only. A resumed run goes on in the same tracker run; steps redone after an
interruption are logged again there (MLflow keeps both values of such a step; ``log.jsonl`` keeps one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import write_text


class Tracker:
    """Base: every method does nothing."""

    def start(self, cfg, run_dir: Path, resumed: bool) -> None: ...

    def log(self, record: dict) -> None: ...

    def finish(self, run_dir: Path, metrics: dict) -> None: ...

    def close(self) -> None: ...


def numeric(record: dict) -> dict[str, float]:
    """The numbers of a record (not its step / epoch counters or flags)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "epoch")}  # fmt: skip


def group_of(record: dict) -> str:
    """``train`` for training steps, the split (``val``, ``test``) for evaluations, ``baseline/<split>`` before step 1,
    the record's type otherwise (e.g. ``ccp_stage``)."""
    if record.get("type") == "eval":
        return f"baseline/{record.get('split')}" if record.get("baseline") else str(record.get("split", "eval"))
    return str(record.get("type", "event"))


class JsonLog(Tracker):
    """``RUN_DIR/log.jsonl``: one JSON record a line, appended; counts its records (a checkpoint stores the count)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "log.jsonl"
        self.records = 0

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        self.records += 1

    def sync(self) -> None:
        """fsync the log: the records a checkpoint counts are on disk before it."""
        if self.path.is_file():
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())

    def truncate(self, records: int | None, step: int) -> int:
        """Cut the log back to what it held when the checkpoint being resumed was written: its first ``records``
        records (checkpoints without the count: the records up to ``step``). What an interrupted process wrote
        after that checkpoint (including a line cut short by a kill) is dropped, so each record appears once.
        Returns how many records were kept."""
        if not self.path.is_file():
            self.records = 0
            return 0
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if records is not None and len(kept) >= records:
                break
            if records is not None or record.get("step", 0) <= step:
                kept.append(line)
        write_text(self.path, "".join(line + "\n" for line in kept))
        self.records = len(kept)
        return self.records


class TensorBoardTracker(Tracker):
    """Scalars ``<group>/<name>`` in ``RUN_DIR/tensorboard`` (``train.tensorboard: true``)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            hint = "train.tensorboard=true needs the tensorboard package: pip install tensorboard"
            raise ImportError(hint) from e
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict) -> None:
        group = group_of(record)
        for key, value in numeric(record).items():
            self.writer.add_scalar(f"{group}/{key}", value, record.get("step", 0))

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """An MLflow run (``log.mlflow: true``): the resolved config as params, every record's numbers as metrics
    ``<group>/<name>`` at its step, and at the end ``report.html``, ``metrics.json`` and the best checkpoint as
    artifacts. The tracking URI is ``log.mlflow_tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a local store
    in ``./mlruns`` (``sqlite:///mlruns/mlflow.db``, artifacts beside it). The MLflow run id is kept in
    ``RUN_DIR/mlflow_run_id``, so a resumed run continues the same MLflow run."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "deepmetric"):
        try:
            import mlflow
        except ImportError as e:
            raise ImportError("log.mlflow=true needs MLflow: pip install 'deepmetric[mlflow]'") from e
        self.mlflow = mlflow
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            Path("mlruns").mkdir(exist_ok=True)
            uri = f"sqlite:///{Path('mlruns').resolve() / 'mlflow.db'}"
        self.uri, self.experiment, self.run = uri, experiment, None

    def start(self, cfg, run_dir: Path, resumed: bool) -> None:
        from omegaconf import OmegaConf

        from ..compare import _flatten

        client_id = Path(run_dir) / "mlflow_run_id"
        self.mlflow.set_tracking_uri(self.uri)
        if self.mlflow.get_experiment_by_name(self.experiment) is None:
            # a local database keeps its artifacts beside it (MLflow's default would be ./mlruns of the cwd)
            location = None
            if self.uri.startswith("sqlite:///"):
                location = (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
            self.mlflow.create_experiment(self.experiment, artifact_location=location)
        self.mlflow.set_experiment(self.experiment)
        run_id = client_id.read_text().strip() if client_id.is_file() else None
        self.run = self.mlflow.start_run(run_id=run_id, run_name=None if run_id else Path(run_dir).name)
        if run_id is None:
            params = _flatten(OmegaConf.to_container(OmegaConf.structured(cfg)))
            self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            self.mlflow.set_tags({"deepmetric.run_dir": str(Path(run_dir).resolve())})
            write_text(client_id, self.run.info.run_id + "\n")

    def log(self, record: dict) -> None:
        group = group_of(record)
        values = {f"{group}/{k}".replace("@", "_at_"): v for k, v in numeric(record).items()}
        if values:
            self.mlflow.log_metrics(values, step=int(record.get("step", 0)))

    def finish(self, run_dir: Path, metrics: dict) -> None:
        for name in ("report.html", "metrics.json", "config.yaml"):
            if (Path(run_dir) / name).is_file():
                self.mlflow.log_artifact(str(Path(run_dir) / name))
        best = Path(run_dir) / "checkpoints" / "best.pt"
        if best.is_file():
            self.mlflow.log_artifact(str(best), artifact_path="checkpoints")

    def close(self) -> None:
        if self.run is not None:
            self.mlflow.end_run()
            self.run = None


def build_trackers(cfg, run_dir: Path) -> list[Tracker]:
    """The trackers ``cfg`` asks for: ``train.tensorboard``, ``log.mlflow``."""
    trackers: list[Tracker] = []
    if cfg.train.tensorboard:
        trackers.append(TensorBoardTracker(run_dir))
    if cfg.log.mlflow:
        trackers.append(MLflowTracker(cfg.log.mlflow_tracking_uri, cfg.log.mlflow_experiment))
    return trackers
