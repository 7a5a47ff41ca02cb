"""Export a run's test-time embedding to ONNX or TorchScript, with preprocessing metadata and a parity check.

The exported graph takes decoded uint8 images at the run's load size (N × C × L × L) and contains the eval
transform, the normalisation and the network, so it is self-contained; ``<file>.json`` beside it records how to
decode images, the embedding size, the source checkpoint and the SHA-256 of every file written. After export the
file is loaded back (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript) and run on a batch; the export fails if
its output differs from the PyTorch model's by more than ``tolerance`` (default 1e-4) anywhere, and leaves no file.
When the run was calibrated (``deepmetric calibrate``) for these weights, the metadata carries its match threshold
and confidence curve (``calibration``); a calibration of other weights is an error, so re-calibrate first.

ONNX is one self-contained file when the weights fit ONNX's 2 GB protobuf limit (every model deepmetric builds does);
a larger one keeps its weights in ``<file>.data`` beside it, which must travel with the ``.onnx`` file: the metadata
names it (``external_data``) and records its hash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import RunError
from ..integrity import sha256_file
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
    data_file = out.with_name(out.name + ".data")
    out.parent.mkdir(parents=True, exist_ok=True)
    module = model.exportable()
    g = torch.Generator().manual_seed(seed)
    shape = (batch, model.channels, model.load_size, model.load_size)
    example = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    with torch.no_grad():
        reference = module(example).numpy()
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(module, (example[:2],), check_trace=False)
        traced.save(str(out))
        exported = torch.jit.load(str(out))
        with torch.no_grad():
            got = exported(example).numpy()
    else:
        try:
            import onnxruntime
        except ImportError as e:
            raise ImportError(
                "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'deepmetric[onnx]'"
            ) from e
        batch_dim = torch.export.Dim("batch", min=1)
        data_file.unlink(missing_ok=True)  # a previous large export's weights must not sit beside a new file
        torch.onnx.export(module, (example[:2],), str(out), input_names=["images"], output_names=["embedding"],
                          dynamic_shapes={"images": {0: batch_dim}}, dynamo=True, verbose=False,
                          external_data=weight_bytes(module) >= ONNX_SINGLE_FILE_LIMIT)  # fmt: skip
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": example.numpy()})[0]
    max_diff = float(np.abs(got - reference).max())
    if not max_diff <= tolerance:
        out.unlink(missing_ok=True)  # never leave a file behind that does not match the model
        data_file.unlink(missing_ok=True)
        raise ParityError(
            f"exported {fmt} model differs from the PyTorch model by {max_diff:.3g} > {tolerance}; nothing written"
        )
    meta = {
        "format": fmt,
        "file": out.name,
        "sha256": sha256_file(out),
        "external_data": {"file": data_file.name, "sha256": sha256_file(data_file)} if data_file.exists() else None,
        "max_abs_difference": max_diff,
        "tolerance": tolerance,
        "parity_batch": batch,
        "preprocessing": model.preprocessing(),
        "source": model.source,
        "class_names": model.meta.get("class_names", {}),
        "calibration": calibration,
    }
    write_json(out.with_suffix(out.suffix + ".json"), meta)
    return meta


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
