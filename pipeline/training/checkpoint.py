"""Atomic, pickle-free training checkpoints for resuming after an interruption.

A checkpoint folder (`models/<run>/checkpoint/`) holds, after every finished epoch `k`:

- `module-e{k}.safetensors`: the trained module's weights (safetensors: no code on load);
- `optimizer-e{k}.pt`: the optimizer state (tensors and numbers; `torch.load(weights_only=True)`);
- `best-e{j}.safetensors`: the weights of the best epoch `j` so far;
- `state.json`: epoch, step, best score, history, scheduler state, config fingerprint and the
  names of the files above.

Every file is written atomically and `state.json` is replaced last, so a `kill -9` at any
moment leaves a consistent checkpoint (the previous epoch's) and loses at most one epoch.
Files no longer named by `state.json` are removed after it is replaced.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from data_prep.layout import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

STATE = "state.json"


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Writes a module's state dict as safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_model(_unwrap(module), str(tmp), metadata=metadata)


def load_weights(module: nn.Module, path: Path) -> None:
    """Loads safetensors weights into `module` (strict: every key must match)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file missing; re-run the train stage")
    device = next(iter(module.state_dict().values()), torch.empty(0)).device
    try:
        load_model(_unwrap(module), path, strict=True, device=str(device))
    except SafetensorError as err:  # truncated or overwritten: the bare error names no file
        raise ValueError(f"{path}: damaged weights file ({err}); re-run the train stage that "
                         f"wrote {path.parent} (dvc repro --force train)") from None


def _unwrap(module: nn.Module) -> nn.Module:
    # DistributedDataParallel and torch.compile wrap the module; their state dict keys carry a
    # "module." / "_orig_mod." prefix
    if isinstance(module, DistributedDataParallel):
        module = module.module
    return getattr(module, "_orig_mod", module)


class Checkpointer:
    """Writes and reads the resumable state of one training run."""

    def __init__(self, folder: Path, fingerprint: str):
        """
        Args:
            folder: the checkpoint folder (created on first save).
            fingerprint: hash of everything that defines the run (params, data, weights);
                a checkpoint with another fingerprint is never resumed.
        """
        self.folder = folder
        self.fingerprint = fingerprint

    def save(
        self,
        epoch: int,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        improved: bool,
    ) -> None:
        """Saves the state after `epoch` (1-based count of finished epochs)."""
        previous = self._read_state() or {}
        if previous.get("fingerprint") != self.fingerprint:
            previous = {}  # a stale checkpoint of another configuration: overwrite it
        files = {
            "module": f"module-e{epoch:04d}.safetensors",
            "optimizer": f"optimizer-e{epoch:04d}.pt",
            "best": f"best-e{epoch:04d}.safetensors"
            if improved
            else previous.get("files", {}).get("best"),
        }
        save_weights(module, self.folder / files["module"])
        with atomic_path(self.folder / files["optimizer"]) as tmp:
            torch.save(optimizer.state_dict(), tmp)
        if improved:
            with atomic_path(self.folder / files["best"]) as tmp:
                shutil.copyfile(self.folder / files["module"], tmp)
        write_json(
            self.folder / STATE,
            {**state, "epoch": epoch, "fingerprint": self.fingerprint, "files": files},
        )
        keep = {STATE, *[f for f in files.values() if f]}
        for path in self.folder.iterdir():  # older epochs and temp files of killed writes
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def load(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Restores module and optimizer from the last epoch; returns the saved state.

        Returns None (and starts nothing) when there is no checkpoint or it belongs to a run
        with another configuration.
        """
        state = self._read_state()
        if state is None:
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning(
                "%s: checkpoint of a different configuration (params, data or weights changed); "
                "starting from scratch", self.folder
            )
            return None
        load_weights(module, self.folder / state["files"]["module"])
        device = next(iter(module.parameters())).device
        optim_state = torch.load(
            self.folder / state["files"]["optimizer"], map_location=device, weights_only=True
        )
        optimizer.load_state_dict(optim_state)
        log.info("resuming %s after epoch %d", self.folder, state["epoch"])
        return state

    def load_best(self, module: nn.Module) -> None:
        """Loads the best epoch's weights into `module`."""
        state = self._read_state()
        if state is None or not state["files"].get("best"):
            raise FileNotFoundError(f"{self.folder}: no best checkpoint; train at least one epoch")
        load_weights(module, self.folder / state["files"]["best"])

    def _read_state(self) -> dict[str, Any] | None:
        path = self.folder / STATE
        return read_json(path) if path.is_file() else None
