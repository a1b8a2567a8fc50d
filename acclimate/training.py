"""``acclimate train``: recipe -> continued pretraining -> before/after evidence in a run folder."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from acclimate.adapters import (
    AdapterCheckpoint,
    AdapterError,
    AdapterReport,
    AdapterSettings,
    apply_adapter,
    base_reference,
)
from acclimate.backbones import create_backbone
from acclimate.budget import TimeBudget, parse_duration
from acclimate.callbacks import KNNMonitor, RunMetadata
from acclimate.config import Recipe, construct, load_recipe
from acclimate.data.datamodule import SSLDataModule, describe_normalization
from acclimate.data.transforms import MultiCropTransform
from acclimate.errors import ConfigError
from acclimate.evidence import (
    Evaluation,
    Normalization,
    after_training,
    before_evaluation,
    build_evaluation,
)
from acclimate.fileio import write_text_atomic
from acclimate.malloc import reuse_freed_memory
from acclimate.preflight import check_run_dir, estimate_checkpoint_bytes, load_checkpoint_file
from acclimate.resume import latest_checkpoint, remove_orphans
from acclimate.run_info import BackboneRef, RunInfo, clip_entry, run_info_of
from acclimate.ssl import METHODS, OptimSettings, SSLModule
from acclimate.ssl.compiled import compile_errors, compile_networks, uncompile
from acclimate.trainer_settings import TrainerSettings

log = logging.getLogger(__name__)


RUN_DIR_ENV = "ACCLIMATE_RUN_DIR"


def _run_dir(recipe: Recipe, run_dir: str | Path | None) -> Path:
    # Lightning's DDP launcher re-runs the command for every other local rank: they inherit the
    # environment, so the first process's (time-stamped) run folder is passed on through it.
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return Path(inherited)
    if run_dir is None:
        run_dir = recipe.data.get("run_dir") or Path("runs") / (
            f"{recipe.data['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    path = Path(run_dir)
    os.environ[RUN_DIR_ENV] = str(path)
    if latest_checkpoint(path) is not None:
        raise ConfigError(
            f"{path} already holds a run; resume it with `acclimate train --resume {path}` "
            "or choose another run_dir"
        )
    check_run_dir(path, 0)  # a file in the way, no permission: one line before any work
    return path


def check_resumable(run_dir: str | Path) -> Path:
    """The checkpoint that resuming ``run_dir`` will load (the newest complete one), checked to
    be a readable acclimate checkpoint before anything of the run is rewritten."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run folder; --resume takes the folder of a run")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ConfigError(f"{run_dir}: no checkpoint in checkpoints/ to resume from")
    run_info_of(load_checkpoint_file(ckpt), ckpt)  # its run info readable, too
    return ckpt


class _RunLog:
    """The run's ``train.log``: acclimate's INFO records and everyone's warnings, whatever the
    caller's logging set-up (from Python, the root logger's WARNING level would otherwise drop
    acclimate's INFO records before any handler saw them). Undone by :meth:`close`."""

    def __init__(self, run_dir: Path) -> None:
        self.handler = logging.FileHandler(run_dir / "train.log")
        self.handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        self.handler.setLevel(logging.INFO)
        self.ours = logging.getLogger("acclimate")
        self.level = self.ours.level
        if self.ours.getEffectiveLevel() > logging.INFO:
            self.ours.setLevel(logging.INFO)
        logging.getLogger().addHandler(self.handler)

    def close(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        self.ours.setLevel(self.level)


def train(
    recipe: Recipe, run_dir: str | Path | None = None, resume: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Run a recipe end to end; return the run folder and its metrics.

    With ``resume``, ``run_dir`` must be an existing run: training continues from its newest
    checkpoint (`check_resumable`) with the saved recipe (plus any new overrides), exactly as
    if it had never stopped.
    """
    if resume:
        check_resumable(run_dir)  # type: ignore[arg-type]
    run_dir = Path(run_dir) if resume else _run_dir(recipe, run_dir)  # type: ignore[arg-type]
    run_log = _RunLog(run_dir)
    try:
        return _train(recipe, run_dir, resume)
    finally:
        run_log.close()


@dataclass
class _Model:
    """The method module that trains, the frozen start it is measured against (None once
    measured) and what the adapter made of the backbone."""

    module: SSLModule
    start: nn.Module | None
    adapter: AdapterSettings
    report: AdapterReport
    base: dict[str, Any]


def _train(recipe: Recipe, run_dir: Path, resume: bool) -> tuple[Path, dict[str, Any]]:
    started = time.monotonic()
    reuse_freed_memory()  # before the loader forks its workers: they inherit it
    pl.seed_everything(recipe.data["seed"], workers=True)
    torch.set_float32_matmul_precision("high")
    backbone, dm, norm = _build_data(recipe, run_dir)
    model = _build_model(recipe, backbone, dm.batch_size)
    settings = construct(recipe, "trainer", TrainerSettings).for_networks(model.module.networks())
    settings.lay_out(model.module, model.start)  # student, teachers and the frozen start alike
    if settings.compile:  # after the layout: the compiled graphs are specialised to it
        compiled = compile_networks(model.module.networks())
        log.info("trainer.compile: %d network(s) compile on the first steps", len(compiled))
    ev = build_evaluation(recipe, dm, model.start, norm)  # type: ignore[arg-type]
    info = _run_info(recipe, dm, norm, model.adapter, ev.settings.features)
    trainer = _build_trainer(recipe, run_dir, resume, settings, info, model, ev)

    metrics_path = run_dir / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    do_eval = ev.sources is not None and ev.settings.before_after and trainer.is_global_zero
    eval_s = before_evaluation(
        model.start, model.module.device, ev, trainer, metrics, metrics_path, do_eval
    )
    model.start = None  # the start's memory back before training
    if settings.max_time is not None:
        _set_deadline(trainer, settings, started, eval_s)

    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    with compile_errors(settings.compile):
        trainer.fit(model.module, datamodule=dm, ckpt_path=ckpt and str(ckpt), weights_only=True)
    _save_final_checkpoint(trainer, run_dir)
    uncompile(model.module)  # the after-evaluation runs the before-evaluation's (eager) code
    after_training(model.module, ev, trainer, run_dir, metrics, metrics_path, do_eval)
    return run_dir, metrics


def _save_final_checkpoint(trainer: pl.Trainer, run_dir: Path) -> None:
    """Make ``last.ckpt`` hold the final weights. Lightning refreshes it only when a periodic
    checkpoint is written, and at the end of training only if none was: a run that ends between
    two saves (``trainer.checkpoint_every_n_epochs`` >= 2, a time budget ending mid-way) would
    otherwise measure its final weights and export, and resume from, older ones."""
    saved = getattr(trainer.checkpoint_callback, "_last_global_step_saved", None)
    if trainer.global_step > 0 and saved != trainer.global_step:  # unknown: write it anyway
        log.info("writing last.ckpt at the final step %d", trainer.global_step)
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # atomic, all ranks


def _build_data(recipe: Recipe, run_dir: Path) -> tuple[nn.Module, SSLDataModule, Normalization]:
    """The starting backbone, the data module with its augmentation, and the normalisation
    (mean, std, clip bounds) resolved on the training data; the resolved recipe (these values
    written into it) is saved as the run's ``recipe.yaml``."""
    backbone = construct(recipe, "backbone", create_backbone)
    dm = construct(recipe, "data", SSLDataModule, bad_file_log=run_dir / "bad_files.txt")
    dm.seed = recipe.data["seed"]
    mean, std = dm.normalization(getattr(backbone, "pretrained_cfg", None))
    recipe.data["data"]["mean"], recipe.data["data"]["std"] = mean, std
    log.info("normalisation: %s", describe_normalization(mean, std))
    clip = dm.clip_range()  # per-channel (low, high) of data.clip, or None
    if clip is not None:
        log.info("clipping channels to percentiles %g-%g of the training data", *dm.clip)
    aug = recipe.section("augment")
    if aug.get("global_size") is None:
        recipe.data["augment"]["global_size"] = dm.image_size
    dm.transform = construct(
        recipe, "augment", MultiCropTransform, mean=mean, std=std, channels=dm.channels, clip=clip
    )
    write_text_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
    return backbone, dm, Normalization(mean, std, clip)


def _build_model(recipe: Recipe, backbone: nn.Module, batch_size: int) -> _Model:
    """The adapter applied to ``backbone`` and the method module around it, with a frozen
    copy of the start for the before-evaluation."""
    optim = construct(recipe, "optim", OptimSettings)
    start = copy.deepcopy(backbone).eval()
    adapter = construct(recipe, "adapter", AdapterSettings)
    try:  # before the method copies the backbone, so that its EMA teacher has the same layers
        report = apply_adapter(backbone, adapter)
        base = base_reference(recipe.data["backbone"], backbone) if adapter.active else {}
    except AdapterError as e:
        raise ConfigError(f"{recipe.files[-1]}: adapter: {e}") from None
    log.info(report.summary())
    if adapter.active and not optim.freeze_norm_stats:
        log.warning("optim.freeze_norm_stats is false: frozen BatchNorm layers still re-estimate")
    method_cls = METHODS[recipe.data["method"]["name"]]
    module = construct(
        recipe, "method", method_cls, backbone=backbone, batch_size=batch_size, optim=optim
    )
    return _Model(module, start, adapter, report, base)


def _run_info(
    recipe: Recipe,
    dm: SSLDataModule,
    norm: Normalization,
    adapter: AdapterSettings,
    features: str,
) -> RunInfo:
    """The `RunInfo` that every checkpoint of this run carries."""
    mean, std, clip = norm
    bands = dm.band_names  # names in input order, for the export
    return RunInfo(
        backbone=BackboneRef(**recipe.section("backbone")),
        method=recipe.data["method"]["name"],
        image_size=dm.image_size,
        channels=dm.channels,
        mean=tuple(mean),
        std=tuple(std),
        adapter=adapter,
        features=features,
        bands=None if bands is None else tuple(bands),
        reader=dm.options,  # how files are read (bands, window, slices, nodata fill)
        statistics=dm.stats or (dm.statistics() if dm.stats_file else None),
        clip=clip_entry(dm.clip, clip),
    )


def _build_trainer(
    recipe: Recipe,
    run_dir: Path,
    resume: bool,
    settings: TrainerSettings,
    info: RunInfo,
    model: _Model,
    ev: Evaluation,
) -> pl.Trainer:
    """The Trainer with the run's callbacks (metadata, monitors, adapter checkpoints), its
    parameter counts logged, and room for the checkpoints checked."""
    sources, eval_tf, eval_settings = ev.sources, ev.transform, ev.settings
    mean, std, _ = ev.norm
    callbacks: list[pl.Callback] = [RunMetadata(info, recipe.data)]
    if sources is not None and eval_settings.every_n_epochs > 0:
        callbacks.append(KNNMonitor(*sources, eval_tf, eval_settings))
    if sources is not None and eval_settings.pictures and eval_settings.every_n_epochs > 0:
        from acclimate.eval.pictures import PictureMonitor

        callbacks.append(
            PictureMonitor(
                sources[1],
                eval_tf,
                mean,
                std,
                eval_settings.n_pictures,
                eval_settings.projector_images,
                eval_settings.every_n_epochs,
                eval_settings.batch_size,
            )
        )
    if model.adapter.active:
        callbacks.append(AdapterCheckpoint(model.base, model.adapter.save_base))
    trainer = settings.build(run_dir, callbacks, seed=recipe.data["seed"])
    report = model.report
    params = {"params/backbone_trainable": report.trainable, "params/backbone_total": report.total}
    for lg in trainer.loggers if not resume else []:
        lg.log_hyperparams(params)
        lg.log_metrics({**params, "params/backbone_trainable_pct": report.percent}, step=0)
    if trainer.is_global_zero:  # before the before-evaluation: room for the checkpoints
        remove_orphans(run_dir / "checkpoints")
        check_run_dir(run_dir, estimate_checkpoint_bytes(model.module))
    return trainer


def _set_deadline(
    trainer: pl.Trainer, settings: TrainerSettings, started: float, eval_s: float
) -> None:
    """The time budget's deadline: the run's start plus ``max_time``, less a reserve for the
    after-evaluation (as long as the before one) and saving."""
    budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
    reserve = 1.2 * eval_s + 5.0  # the after-evaluation (as long as the before one), saving
    budget.deadline = started + parse_duration(settings.max_time).total_seconds() - reserve
    log.info(
        "time budget %s: %.0f s of it left for training (%.0f s kept for the evaluation)",
        settings.max_time,
        budget.deadline - time.monotonic(),
        reserve,
    )


def resume_recipe(run_dir: str | Path, overrides: list[str]) -> Recipe:
    """The saved recipe of a run, with new overrides (e.g. ``trainer.max_epochs=20``)."""
    path = Path(run_dir) / "recipe.yaml"
    if latest_checkpoint(run_dir) is None:
        raise ConfigError(f"{run_dir}: no checkpoint in checkpoints/ to resume from")
    return load_recipe(path, overrides)
