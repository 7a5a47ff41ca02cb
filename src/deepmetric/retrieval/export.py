"""Export a run's test-time embedding to ONNX or TorchScript, with preprocessing metadata and a parity check.

The exported graph takes decoded uint8 images at the run's load size (N × C × L × L) and contains the eval
transform, the normalisation and the network, so it is self-contained; ``<file>.json`` beside it records how to
decode images, the embedding size, the source checkpoint and the SHA-256 of every file written. After export the
file is loaded back (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript) and run on a batch; the export fails if
its output differs from the PyTorch model's by more than ``tolerance`` (default 1e-4) anywhere.

Nothing is lost on failure: the model is written into a temporary folder beside ``out`` and checked there; only a
model that passed is moved over ``out`` (fsynced, renamed, the folder fsynced), then its metadata. A failed export
leaves the previous export as it was. A killed one leaves it as it was, or the new export whole, or (killed between
the renames) files of the two exports side by side, which `load_exported` refuses: it checks the model (and
``.data``) against the SHA-256 in the metadata before it runs anything, and a garbled file or a mixed pair is an
`IntegrityError` naming the file. A temporary folder a killed export left is removed by the next export to ``out``.
When the run was calibrated (``deepmetric calibrate``) for these weights, the metadata carries its match threshold
and confidence curve (``calibration``); a calibration of other weights is an error, so re-calibrate first.

ONNX is one self-contained file when the weights fit ONNX's 2 GB protobuf limit (every model deepmetric builds does);
a larger one keeps its weights in ``<file>.data`` beside it, which must travel with the ``.onnx`` file: the metadata
names it (``external_data``) and records its hash.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import RunError
from ..integrity import IntegrityError, fsync_dir, sha256_file
from ..training.checkpoint import write_json
from .model import EmbeddingModel

FORMATS = ("onnx", "torchscript")
ONNX_SINGLE_FILE_LIMIT = 1.8e9  # bytes of weights: below it the graph and weights fit in one protobuf (limit 2 GiB)


class ParityError(RunError):
    """The exported model's output differs from the PyTorch model's beyond the tolerance."""


def export(model: EmbeddingModel, out: str | Path, fmt: str, *, tolerance: float = 1e-4, batch: int = 8,
           seed: int = 0) -> dict:  # fmt: skip
    """Write the exported model to ``out`` and its metadata to ``out.json``; returns the metadata."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out)
    calibration = _calibration(model)  # first: a calibration of other weights stops the export before any file
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a killed export to the same file
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staged = stage / out.name
        try:
            max_diff = _write_and_check(model, staged, fmt, tolerance, batch, seed)
        except ParityError as e:
            kept = f"; {out} is unchanged" if out.exists() else ""
            raise ParityError(f"{e}; nothing written{kept}") from None
        staged_data = staged.with_name(staged.name + ".data")
        meta = {
            "format": fmt,
            "file": out.name,
            "sha256": sha256_file(staged),
            "external_data": {"file": staged_data.name, "sha256": sha256_file(staged_data)}
            if staged_data.exists() else None,
            "max_abs_difference": max_diff,
            "tolerance": tolerance,
            "parity_batch": batch,
            "preprocessing": model.preprocessing(),
            "source": model.source,
            "class_names": model.meta.get("class_names", {}),
            "calibration": calibration,
        }  # fmt: skip
        _commit(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_json(out.with_suffix(out.suffix + ".json"), meta)
    return meta


def _write_and_check(model: EmbeddingModel, path: Path, fmt: str, tolerance: float, batch: int, seed: int) -> float:
    """The exported model at ``path`` (a staging folder), loaded back and run next to the PyTorch model on a random
    uint8 batch; its max |difference|, or `ParityError` beyond ``tolerance``."""
    module = model.exportable()
    g = torch.Generator().manual_seed(seed)
    shape = (batch, model.channels, model.load_size, model.load_size)
    example = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    with torch.no_grad():
        reference = module(example).numpy()
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(module, (example[:2],), check_trace=False)
        traced.save(str(path))
        with torch.no_grad():
            got = torch.jit.load(str(path))(example).numpy()
    else:
        onnxruntime = _onnxruntime()
        batch_dim = torch.export.Dim("batch", min=1)
        torch.onnx.export(module, (example[:2],), str(path), input_names=["images"], output_names=["embedding"],
                          dynamic_shapes={"images": {0: batch_dim}}, dynamo=True, verbose=False,
                          external_data=weight_bytes(module) >= ONNX_SINGLE_FILE_LIMIT)  # fmt: skip
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": example.numpy()})[0]
    max_diff = float(np.abs(got - reference).max())
    if not max_diff <= tolerance:
        raise ParityError(f"exported {fmt} model differs from the PyTorch model by {max_diff:.3g} > {tolerance}")
    return max_diff


def _commit(stage: Path, out: Path) -> None:
    """Move the checked files from ``stage`` over ``out`` (and ``out.data``): the weights file first, so the model
    never names weights that are not there; a previous large export's ``.data`` goes when the new model has none."""
    data, staged, staged_data = out.with_name(out.name + ".data"), stage / out.name, stage / (out.name + ".data")
    for path in (staged, staged_data):
        if path.exists():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    large = staged_data.exists()
    if large:
        os.replace(staged_data, data)
    os.replace(staged, out)
    if not large:
        data.unlink(missing_ok=True)
    fsync_dir(out.parent)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError("ONNX needs onnx, onnxscript and onnxruntime: pip install 'deepmetric[onnx]'") from e
    return onnxruntime


class ExportedModel:
    """An exported model with its metadata, checked against its recorded hashes: ``model(images)`` embeds decoded
    uint8 images (N × C × L × L at ``meta["preprocessing"]``'s load size) into float32 embeddings, as the run would."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta
        if meta["format"] == "onnx":
            session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self._run = lambda x: session.run(None, {"images": x})[0]
        else:
            module = torch.jit.load(str(path))

            def run(x):
                with torch.no_grad():
                    return module(torch.from_numpy(x)).numpy()

            self._run = run

    def __call__(self, images) -> np.ndarray:
        return self._run(np.ascontiguousarray(images, dtype=np.uint8))


def load_exported(path: str | Path) -> ExportedModel:
    """The model ``deepmetric export`` wrote to ``path``, after checking it (and its ``.data`` file) against the
    SHA-256 its metadata ``path.json`` records; `IntegrityError` naming the file when one does not match."""
    path = Path(path)
    meta_path = path.with_suffix(path.suffix + ".json")
    if not path.is_file() or not meta_path.is_file():
        missing = path if not path.is_file() else meta_path
        raise FileNotFoundError(f"{missing} not found: an export is the model file and its metadata {meta_path.name}")
    try:
        meta = json.loads(meta_path.read_text())
        files = [(path, meta["sha256"])]
        if meta.get("external_data"):
            files.append((path.with_name(meta["external_data"]["file"]), meta["external_data"]["sha256"]))
        for key in ("format", "preprocessing"):  # what a user of the export reads
            if key not in meta:
                raise KeyError(key)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise IntegrityError(f"cannot read the export metadata {meta_path}: {what}; export the model again") from None
    for file, expected in files:
        if not file.is_file():
            raise IntegrityError(f"{file} is missing: its model {path} needs it beside it; export the model again")
        if sha256_file(file) != expected:
            raise IntegrityError(f"{file} does not match the SHA-256 in {meta_path.name} (corrupt, changed, or from "
                                 "another export): export the model again")  # fmt: skip
    return ExportedModel(path, meta)


def _calibration(model: EmbeddingModel) -> dict | None:
    """The run's match threshold and confidence curve for the exported weights (None when not calibrated)."""

    calibration = model.calibration(required=False) if model.source.get("run_dir") else None
    if calibration is None:
        return None
    return {**calibration.summary(), "confidence_curve": calibration.record["confidence_curve"],
            "distance": "Euclidean between the L2-normalised embeddings: sqrt(2 - 2 cos)"}  # fmt: skip


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers (what an ONNX file stores as initializers)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
