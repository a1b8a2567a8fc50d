"""Lightning plumbing: atomic checkpoints, the online kNN monitor, metadata in checkpoints."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from acclimate.errors import TrainingFailed
from acclimate.eval.protocol import EvalSettings, protocol_knn, split_features
from acclimate.guard import DIVERGED_HINT, non_finite_tensors
from acclimate.malloc import reuse_freed_memory
from acclimate.resume import EPOCH_CHECKPOINT, remove_old_epoch_checkpoints
from acclimate.run_info import INFO_KEY, RECIPE_KEY, RunInfo

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename over the target: a run
    killed mid-save keeps its previous checkpoint intact. Loads with ``weights_only=True``.

    Once a periodic epoch checkpoint is in place, only the newest ``keep_epochs`` of them stay
    (`acclimate.resume.remove_old_epoch_checkpoints`; -1 keeps all). This works on the files,
    so those of an earlier version or of a moved run folder count too.
    """

    def __init__(self, keep_epochs: int = -1) -> None:
        super().__init__()
        self.keep_epochs = keep_epochs

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        path = Path(path)
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:  # never replace a good checkpoint with a diverged one
            raise TrainingFailed(
                f"not writing {path}: {len(bad)} weight tensor(s) hold NaN or inf (first: "
                f"{bad[0]}); training diverged. To fix: {DIVERGED_HINT}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TrainingFailed(
                f"could not write the checkpoint {path} ({first}); the previous checkpoint is "
                f"kept. Free space on {path.parent} (or check its permissions), then resume "
                "with `acclimate train --resume RUN_DIR`"
            ) from None
        finally:
            if tmp.exists():
                tmp.unlink()
        if self.keep_epochs >= 0 and EPOCH_CHECKPOINT.fullmatch(path.name):
            remove_old_epoch_checkpoints(path.parent, self.keep_epochs)  # the new one in place

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class ReuseFreedMemory(pl.Callback):
    """`reuse_freed_memory` on every rank, before its loader forks workers: ranks started by
    ``ddp_spawn`` (fresh interpreters) do not pass through `acclimate.training.train`, where the
    launching process sets it."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        reuse_freed_memory()


class RunMetadata(pl.Callback):
    """Store the run's `RunInfo` in every checkpoint (under ``"acclimate"``), so that a
    checkpoint alone is enough to rebuild, evaluate and export its backbone, and the resolved
    recipe beside it (``"acclimate_recipe"``) as a record."""

    def __init__(self, info: RunInfo, recipe: dict[str, Any]) -> None:
        self.entry, self.recipe = info.to_dict(), recipe

    def on_save_checkpoint(
        self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[INFO_KEY] = self.entry
        checkpoint[RECIPE_KEY] = self.recipe


class KNNMonitor(pl.Callback):
    """Weighted kNN top-1 of the exported backbone on a labelled split, logged as ``knn/top1``
    before training (step 0) and every ``every_n_epochs`` epochs: the protocol's kNN
    (``acclimate.eval.protocol``) on its features, as the before/after, with the loader in the
    main process (no worker processes forked mid-training). Runs on global rank 0 only."""

    def __init__(
        self, train_src: Any, test_src: Any, transform: Any, settings: EvalSettings
    ) -> None:
        self.sources = (train_src, test_src)
        self.transform = transform
        self.settings = replace(settings, num_workers=0)

    def _measure(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model = module.export_backbone()
        train, test = split_features(
            model, self.sources, self.transform, self.settings, progress=False
        )
        acc = protocol_knn(train, test, self.settings)
        log.info("kNN top-1 at step %d: %.4f", trainer.global_step, acc)
        for lg in trainer.loggers:
            lg.log_metrics({"knn/top1": acc}, step=trainer.global_step)

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.global_step == 0:
            self._measure(trainer, module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        n = self.settings.every_n_epochs
        last = 0 < (trainer.max_epochs or 0) <= trainer.current_epoch + 1  # -1: a time budget
        if n and ((trainer.current_epoch + 1) % n == 0 or last):
            self._measure(trainer, module)
