"""The ``trainer:`` section of a recipe: Lightning Trainer settings, and the Trainer they build
(checkpoints, time budget, guard, RNG state, logger), in one place for `acclimate.training`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy
from torch import nn

from acclimate.backbones.layout import channels_last, has_convolutions
from acclimate.budget import TimeBudget
from acclimate.callbacks import AtomicCheckpointIO, ReuseFreedMemory
from acclimate.guard import TrainingGuard
from acclimate.precision import AUTO, on_cuda, resolve_precision
from acclimate.resume import RNGState


@dataclass
class TrainerSettings:
    """The ``trainer:`` section: Lightning Trainer settings.

    Args:
        max_epochs: passes over the training source.
        max_steps: stop after this many optimisation steps (-1: no limit).
        max_time: a time budget for the whole run, ``DD:HH:MM:SS`` (e.g. ``00:00:30:00``):
            the run measures its speed on its first steps and plans its total steps so that
            training, checkpoint and the after-evaluation end in time; every schedule spans the
            plan. ``max_epochs`` is then ignored; ``max_steps`` still caps the plan.
        accelerator, devices, num_nodes, strategy: as in Lightning (``auto``, ``cpu``, ``gpu``;
            ``ddp``, ``fsdp``); launch multi-node runs with torchrun or SLURM.
        precision: ``auto`` (bf16 autocast where it pays on this machine: a GPU with bf16, or
            a transformer on a CPU whose bf16 matmuls run at least 2x float32; else float32;
            `acclimate.precision`), ``32-true``, ``bf16-mixed`` (CPU and recent GPUs) or
            ``16-mixed`` (GPU).
        accumulate_grad_batches: optimisation step every N batches. The learning rate scales
            with the whole accumulated batch, and DINO's and iBOT's centres update once per
            optimisation step on it; but SimCLR's and MoCo's negatives and every BatchNorm's
            statistics come from one micro-batch (N times fewer negatives than the scaled batch
            suggests): raise ``data.batch_size`` or ``trainer.devices`` rather than N for them.
        gradient_clip_val: the gradient-clipping threshold of the method's rule
            (``optim.clip_rule``: DINO clips each parameter's gradient norm, DINOv2 each
            sub-module's, the contrastive methods and MAE do not clip); null disables.
        log_every_n_steps: TensorBoard logging period.
        checkpoint_every_n_epochs: write a periodic checkpoint (``epochNNN.ckpt``) every N
            epochs besides ``last.ckpt``; 0 writes none.
        keep_checkpoints: how many periodic epoch checkpoints to keep, the newest ones (older
            ones are removed once a newer one is written; ``last.ckpt`` is always kept); -1
            keeps all. Raise it to compare epochs later; lower it when many short epochs (a
            time budget) would fill the disk.
        checkpoint_every_n_steps: also checkpoint every N optimisation steps (the newest one is
            kept), so a killed run loses at most N steps; 0 disables. Resume is exact from any
            checkpoint: it holds the data position and random-number state.
        timeout_s: seconds a process waits for the others in a collective before the whole
            job stops (a rank that died ends the job instead of hanging it).
        collapse_spread, collapse_steps: stop when the spread of the student's embeddings
            across the batch (about 1 when healthy, 0 when collapsed) stays below
            ``collapse_spread`` for ``collapse_steps`` steps; 0 steps only logs it.
        limit_train_batches: batches per epoch (a fraction or a count), for quick trials.
        progress_bar: show a progress bar.
        deterministic: ask for deterministic kernels (slower).
        channels_last: store convolution weights channels-last (NHWC), which oneDNN and cuDNN
            run without layout reorders: about 2x faster CNN steps on CPU
            (`acclimate.backbones.layout`); values equal up to float rounding.
        compile: torch.compile the networks a step runs (`SSLModule.networks`: the student
            backbone, its EMA teacher, the anchor's frozen start, distillation's teacher; of a
            ViT its blocks), in place (`acclimate.ssl.compiled`): checkpoints and the export
            keep the uncompiled key names, so a run resumes with either setting. The first
            steps are slower (compilation, again for new crop sizes and when the frozen
            warm-up ends; a time budget re-plans from the later speed); try it on long runs
            and measure first (``bench/bench_precision.py``). The before/after evaluation
            runs uncompiled. Needs a C++ compiler on CPU (Triton on GPU); a compile failure
            stops the run with one line: then set it false.
        sync_batchnorm: convert every BatchNorm (backbone and heads) to torch's SyncBatchNorm so
            that statistics cover the global batch under DDP (GPU only, a torch limitation). The
            contrastive heads already synchronise theirs on any device (``sync_bn_in_head``); the
            backbone's BatchNorm matters only with ``optim.freeze_norm_stats: false``.
    """

    max_epochs: int = 10
    max_steps: int = -1
    max_time: str | None = None
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = AUTO
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 3.0
    log_every_n_steps: int = 10
    checkpoint_every_n_epochs: int = 1
    keep_checkpoints: int = 3
    checkpoint_every_n_steps: int = 0
    timeout_s: float = 1800.0
    collapse_spread: float = 0.02
    collapse_steps: int = 200
    limit_train_batches: int | float | None = None
    progress_bar: bool = True
    deterministic: bool = False
    channels_last: bool = True
    compile: bool = False
    sync_batchnorm: bool = False

    def lay_out(self, *modules: nn.Module | None) -> None:
        """Give ``modules`` (the method module, the frozen start; None skipped) the memory layout
        ``trainer.channels_last`` asks for, in place, before fitting: channels-last when they
        hold convolutions (`acclimate.backbones.layout`). What `acclimate.training` does; a
        harness that builds its own module (``bench/``) calls it to run what a user's run
        runs."""
        present = [m for m in modules if m is not None]
        if self.channels_last and present and has_convolutions(present[0]):
            for module in present:
                channels_last(module)

    def for_networks(self, networks: list[nn.Module]) -> TrainerSettings:
        """These settings with ``precision: auto`` decided for ``networks`` (the ones a step
        runs, `SSLModule.networks`) on this machine (`acclimate.precision`)."""
        return replace(
            self, precision=resolve_precision(self.precision, self.accelerator, networks)
        )

    def world_size(self) -> int:
        """Processes this run will use (devices x nodes), as far as it is known before start."""
        return device_count(self.devices, self.accelerator) * self.num_nodes

    def _strategy(self) -> str | Strategy:
        # The backbone gets no gradient during the frozen warm-up (and frozen adapter layers
        # never do): plain DDP would stop on parameters without gradients. Several devices with
        # the default strategy get the same DDP set-up; every DDP run gets the timeout.
        ddp = ("ddp", "ddp_find_unused_parameters_true")
        if self.strategy in ddp or (self.strategy == "auto" and self.world_size() > 1):
            return DDPStrategy(
                find_unused_parameters=True, timeout=timedelta(seconds=self.timeout_s)
            )
        return self.strategy

    def build(self, run_dir: Path, callbacks: list[pl.Callback], seed: int = 0) -> pl.Trainer:
        folder = run_dir / "checkpoints"
        ckpt = ModelCheckpoint(  # all written; AtomicCheckpointIO keeps keep_checkpoints
            dirpath=folder,
            filename="epoch{epoch:03d}",
            auto_insert_metric_name=False,
            every_n_epochs=self.checkpoint_every_n_epochs,
            save_top_k=-1,
            save_last=True,
        )
        checkpoints: list[pl.Callback] = [ckpt]
        if self.checkpoint_every_n_steps > 0:
            checkpoints.append(
                ModelCheckpoint(
                    dirpath=folder,
                    filename="step{step:07d}",
                    auto_insert_metric_name=False,
                    every_n_train_steps=self.checkpoint_every_n_steps,
                    save_top_k=1,  # the newest only: written before the previous is removed
                )
            )
        guard = TrainingGuard(self.collapse_spread, self.collapse_steps)
        if self.max_time is not None:  # the deadline is set once the run knows its start-up time
            checkpoints.append(TimeBudget(deadline=float("inf"), max_steps=self.max_steps))
        callbacks = [
            *checkpoints,
            LearningRateMonitor(logging_interval="step"),
            ReuseFreedMemory(),
            RNGState(seed),
            guard,
            *callbacks,
        ]
        if self.progress_bar:
            callbacks.append(TQDMProgressBar(refresh_rate=1))
        return pl.Trainer(
            max_epochs=-1 if self.max_time is not None else self.max_epochs,
            max_steps=self.max_steps,
            accelerator=self.accelerator,
            devices=self.devices,
            num_nodes=self.num_nodes,
            strategy=self._strategy(),
            precision=resolve_precision(self.precision, self.accelerator, []),
            accumulate_grad_batches=self.accumulate_grad_batches,
            gradient_clip_val=self.gradient_clip_val,
            log_every_n_steps=self.log_every_n_steps,
            limit_train_batches=self.limit_train_batches,
            enable_progress_bar=self.progress_bar,
            deterministic=self.deterministic,
            sync_batchnorm=self.sync_batchnorm,
            logger=TensorBoardLogger(str(run_dir), name="tensorboard", version=""),
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO(keep_epochs=self.keep_checkpoints)],
            use_distributed_sampler=False,  # ResumableSampler shards the data itself
            num_sanity_val_steps=0,
            limit_val_batches=0,
            enable_model_summary=False,
        )


def device_count(devices: int | str | list[int], accelerator: str = "auto") -> int:
    """How many devices a Lightning ``devices`` value means on this machine (``auto`` and -1:
    every GPU when the accelerator can be a GPU and one is present, else 1)."""
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        devices = -1 if text == "auto" else int(text) if text.lstrip("-").isdigit() else 1
    if devices == -1:
        return torch.cuda.device_count() if on_cuda(accelerator) else 1
    return max(int(devices), 1)
