"""Class probabilities of a trained model on the rows of a spectrogram index.

Frozen runs read their backbone features from the shared feature store (computed once per
image, shared with train and with every other run on the same backbone) and run only the head;
other runs push the images (and rhythm features) through the whole network.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from data_prep.layout import INDEX, rhythm_matrix
from pipeline.training import data
from pipeline.training.device import autocast, forward, model_input, split_batch
from pipeline.training.feature_store import FeatureStore
from pipeline.training.fitting import feature_identity
from pipeline.training.fusion import FusedNet, uses_image
from pipeline.training.run_folder import FEATURE_STORE, rhythm_names
from pipeline.training.transforms import Preprocess
from pipeline.training.weights import WeightsSource


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, preprocess: Preprocess | None, loader: DataLoader,
                  device: torch.device, amp: bool = True, desc: str = "predict") -> np.ndarray:
    """float32 softmax probabilities (n, K) of every batch, in loader order.

    Batches are (images, rr, y) (`preprocess` prepares the images) or (features, rr, y)
    (`preprocess` None). channels_last, and on CUDA (with `amp`) bf16 autocast; the softmax
    is taken in float32.
    """
    model.to(device).eval()
    if preprocess is not None:
        preprocess.to(device)
    model.to(memory_format=torch.channels_last)
    probs = []
    for batch in tqdm(loader, desc=desc, dynamic_ncols=True):
        x, _ = split_batch(batch)
        with autocast(device) if amp else nullcontext():
            logits = forward(model, model_input(x, device, preprocess))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(probs).numpy()


def frame_probs(model: FusedNet, preprocess: Preprocess, resolved: dict, spectrograms: Path,
                frame: pd.DataFrame, device: torch.device, batch_size: int, amp: bool,
                desc: str, workers: int = 0) -> np.ndarray:
    """Probabilities (n, K) of the frame's rows, as train's model computes them."""
    rr = rhythm_matrix(frame, rhythm_names(resolved), spectrograms / INDEX)
    targets = frame["target"].to_numpy(dtype=np.int64)
    if not resolved.get("cached_features"):
        images = data.SpectrogramDataset(spectrograms, frame, rr)
        loader = data.make_loader(images, batch_size, device, 0, num_workers=workers)
        return predict_probs(model, preprocess, loader, device, amp, desc)
    features = np.zeros((len(frame), 0), dtype=np.float32)
    if uses_image(resolved["model"]["inputs"]):
        weights = WeightsSource(**{k: resolved["weights"][k] for k in ("kind", "location",
                                                                         "sha256")})
        identity = feature_identity(model.backbone, weights, resolved["preprocessing"],
                                    resolved["model"]["image_dim"])
        store = FeatureStore(Path(resolved["params"].get("feature_cache_dir") or FEATURE_STORE),
                             identity, model.image_features, preprocess, device, batch_size,
                             resolved["params"].get("feature_dtype", "float32"))
        model.to(device).eval()
        features = store.rows(spectrograms, frame, desc=f"{desc} features")
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(features), torch.from_numpy(rr),
                                             torch.from_numpy(targets))
    loader = data.make_loader(dataset, batch_size, device, 0, batch_index=True)
    return predict_probs(model.head, None, loader, device, amp, desc)
