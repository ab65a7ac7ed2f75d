"""Running an exported ONNX network on uint8 spectrograms (no torch): export's parity check and
`pipeline.predict` both run the bundle through here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.bundle import INPUT_NAME, OUTPUT_NAMES

BATCH_SIZE = 64  # images per ONNX call: memory stays at one batch whatever the record length


def onnx_session(path: Path) -> ort.InferenceSession:
    """An onnxruntime CPU session (protobuf only: loading runs no pickled code)."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_probs(session: ort.InferenceSession, images: np.ndarray, n_classes: int,
              batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Softmax probabilities (n, K) of uint8 images (n, S, S), `batch_size` images per call."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    out = [session.run([OUTPUT_NAMES[0]], {INPUT_NAME: images[i:i + batch_size]})[0]
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.empty((0, n_classes), dtype=np.float32)
