"""Running an exported ONNX network on uint8 spectrograms (no torch): export's parity check and
`pipeline.predict` both run the bundle through here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.runtime.bundle import INPUT_NAME, OUTPUT_NAMES, RR_NAME

BATCH_SIZE = 64  # images per ONNX call: memory stays at one batch whatever the record length


def onnx_session(path: Path) -> ort.InferenceSession:
    """An onnxruntime CPU session (protobuf only: loading runs no pickled code)."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_probs(session: ort.InferenceSession, images: np.ndarray, rr: np.ndarray,
              n_classes: int, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Softmax probabilities (n, K) of uint8 images (n, S, S) and their float32 rhythm features
    (n, F), `batch_size` rows per call. A graph without a rhythm input is fed images only."""
    if len(images) == 0:
        return np.empty((0, n_classes), dtype=np.float32)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    rr = np.ascontiguousarray(rr, dtype=np.float32).reshape(len(images), -1)
    takes_rr = RR_NAME in {i.name for i in session.get_inputs()}

    def feed(i: int) -> dict[str, np.ndarray]:
        batch = {INPUT_NAME: images[i:i + batch_size]}
        return {**batch, RR_NAME: rr[i:i + batch_size]} if takes_rr else batch

    out = [session.run([OUTPUT_NAMES[0]], feed(i))[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.empty((0, n_classes), dtype=np.float32)
