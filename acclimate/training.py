"""``acclimate train``: recipe -> continued pretraining -> before/after evidence in a run folder."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from acclimate.adapters import (
    AdapterCheckpoint,
    AdapterError,
    AdapterSettings,
    apply_adapter,
    base_reference,
)
from acclimate.backbones import create_backbone
from acclimate.backbones.layout import channels_last, has_convolutions
from acclimate.budget import TimeBudget, parse_duration
from acclimate.callbacks import KNNMonitor, RunMetadata
from acclimate.config import Recipe, construct, load_recipe, recipe_error
from acclimate.data.datamodule import SSLDataModule, describe_normalization
from acclimate.data.dataset import read_bad_file_log
from acclimate.data.sources import canonical_split
from acclimate.data.transforms import EvalTransform, MultiCropTransform
from acclimate.errors import AcclimateError, ConfigError
from acclimate.eval.evaluate import (
    EvalSettings,
    evaluate_backbone,
    held_out_split,
    labelled_splits,
)
from acclimate.eval.features import check_kind
from acclimate.fileio import write_json_atomic, write_text_atomic
from acclimate.preflight import check_run_dir, estimate_checkpoint_bytes, load_checkpoint_file
from acclimate.resume import latest_checkpoint, remove_orphans
from acclimate.ssl import METHODS, OptimSettings
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
    load_checkpoint_file(ckpt)
    return ckpt


def _log_to_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


TEST_SEEN_WARNING = (
    "the evaluation test images are part of the training source: self-supervised training saw "
    "them (without labels), so the held-out accuracies are optimistic; give the source a "
    "train/test split (data.train_split: auto) or a separate eval.data to hold them out"
)


def _same_source(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _eval_sources(recipe: Recipe, dm: SSLDataModule) -> tuple[tuple[Any, Any] | None, bool]:
    """(train, test) evaluation sources read like the training images (``dm.options``), or None
    without labelled data; and whether the test images are among the training images."""
    settings = EvalSettings(**recipe.section("eval"))
    spec = settings.data
    if spec is None:
        if not dm.source.has_labels:
            log.warning(
                "no labelled data for evaluation (eval.data): no kNN monitor, no before/after"
            )
            return None, False
        spec = dm.spec
    sources = labelled_splits(spec, dm.channels, settings, dm.options)
    test = held_out_split(spec, settings)
    seen = _same_source(spec, dm.spec) and (
        dm.split is None or test is None or canonical_split(dm.split) == test
    )
    if seen:
        log.warning(TEST_SEEN_WARNING)
    return sources, seen


_save_json = write_json_atomic


def summarize(metrics: dict[str, Any]) -> str:
    """One line: linear-probe and kNN accuracy before -> after adaptation."""
    b, a = metrics.get("before"), metrics.get("after")
    if not (b and a):
        return "no before/after evaluation (no labelled eval data)"
    line = (
        f"linear probe {b['linear_top1']:.4f} -> {a['linear_top1']:.4f} "
        f"({a['linear_top1'] - b['linear_top1']:+.4f}), "
        f"kNN {b['knn_top1']:.4f} -> {a['knn_top1']:.4f} ({a['knn_top1'] - b['knn_top1']:+.4f}) "
        f"on {a['n_test']} held-out images"
    )
    ref = metrics.get("start_at_reference_size")
    if ref:
        line += (
            f"; the start fed {ref['image_size']} px: linear {ref['linear_top1']:.4f}, "
            f"kNN {ref['knn_top1']:.4f}"
        )
    return line


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
    handler = _log_to_file(run_dir)
    try:
        return _train(recipe, run_dir, resume)
    finally:
        logging.getLogger().removeHandler(handler)


def _train(recipe: Recipe, run_dir: Path, resume: bool) -> tuple[Path, dict[str, Any]]:
    started = time.monotonic()
    pl.seed_everything(recipe.data["seed"], workers=True)
    torch.set_float32_matmul_precision("high")
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
        recipe, "method", method_cls, backbone=backbone, batch_size=dm.batch_size, optim=optim
    )

    settings = construct(recipe, "trainer", TrainerSettings)
    if settings.channels_last and has_convolutions(module):
        channels_last(module)  # student, teachers and the frozen start alike
        channels_last(start)
    eval_settings = EvalSettings(**recipe.section("eval"))
    try:  # one line before any work: the backbone cannot give these features
        check_kind(start, eval_settings.features)
    except AcclimateError as e:
        raise recipe_error(recipe, "eval.features", str(e)) from None
    sources, test_images_seen = _eval_sources(recipe, dm)
    eval_tf = EvalTransform(dm.image_size, mean, std, clip)
    callbacks: list[pl.Callback] = [
        RunMetadata(
            {
                "recipe": recipe.data,
                "mean": mean,
                "std": std,
                "image_size": dm.image_size,
                "channels": dm.channels,
                "bands": dm.band_names,  # names in input order, for the export
                "reader": dm.options.to_dict(),  # how files are read (bands, window, slices)
                "statistics": dm.stats or (dm.statistics() if dm.stats_file else None),
                "clip": clip_metadata(dm.clip, clip),
            }
        )
    ]
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
    if adapter.active:
        callbacks.append(AdapterCheckpoint(base, adapter.save_base))
    trainer = settings.build(run_dir, callbacks, seed=recipe.data["seed"])
    params = {"params/backbone_trainable": report.trainable, "params/backbone_total": report.total}
    for lg in trainer.loggers if not resume else []:
        lg.log_hyperparams(params)
        lg.log_metrics({**params, "params/backbone_trainable_pct": report.percent}, step=0)

    if trainer.is_global_zero:  # before the before-evaluation: room for the checkpoints
        remove_orphans(run_dir / "checkpoints")
        check_run_dir(run_dir, estimate_checkpoint_bytes(module))
    metrics_path = run_dir / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    if sources is not None and trainer.is_global_zero:
        metrics["test_images_seen_in_pretraining"] = test_images_seen  # saved with the results
        if test_images_seen:
            _save_json(metrics_path, metrics)
    do_eval = sources is not None and eval_settings.before_after and trainer.is_global_zero
    evaluated, eval_s = time.monotonic(), 0.0
    if do_eval and "before" not in metrics:
        log.info("measuring the starting backbone (frozen features, kNN + linear probe)")
        metrics["before"], _ = evaluate_backbone(
            start, *sources, eval_tf, eval_settings, device=module.device
        )
        _save_json(metrics_path, metrics)
        log.info("before: %s", metrics["before"])
        eval_s = time.monotonic() - evaluated  # what the after-evaluation will take again
        size = eval_settings.reference_size
        if size:  # the start fed the images upsampled: what it knows but does not show
            log.info("measuring the starting backbone on images resized to %d px", size)
            ref_tf = EvalTransform(size, mean, std, clip)
            metrics["start_at_reference_size"], _ = evaluate_backbone(
                start, *sources, ref_tf, eval_settings, device=module.device
            )
            metrics["start_at_reference_size"]["image_size"] = size
            _save_json(metrics_path, metrics)
            log.info("the start at %d px: %s", size, metrics["start_at_reference_size"])
    del start
    if settings.max_time is not None:
        budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
        reserve = 1.2 * eval_s + 5.0  # the after-evaluation (as long as the before one), saving
        budget.deadline = started + parse_duration(settings.max_time).total_seconds() - reserve
        log.info(
            "time budget %s: %.0f s of it left for training (%.0f s kept for the evaluation)",
            settings.max_time,
            budget.deadline - time.monotonic(),
            reserve,
        )

    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt and str(ckpt), weights_only=True)

    bad = read_bad_file_log(run_dir / "bad_files.txt")
    if bad:
        log.warning(
            "%d unreadable file(s) were skipped; list in %s", len(bad), run_dir / "bad_files.txt"
        )
        metrics["bad_files"] = len(bad)
        _save_json(metrics_path, metrics)
    if do_eval:
        log.info("measuring the adapted backbone with the same protocol")
        metrics["after"], _ = evaluate_backbone(
            module.export_backbone(), *sources, eval_tf, eval_settings, device=module.device
        )
        metrics["delta"] = {
            k: metrics["after"][k] - metrics["before"][k] for k in ("knn_top1", "linear_top1")
        }
        _save_json(metrics_path, metrics)
        for lg in trainer.loggers:
            lg.log_metrics(
                {f"final/{k}_delta": v for k, v in metrics["delta"].items()},
                step=trainer.global_step,
            )
    return run_dir, metrics


def clip_metadata(
    percentiles: tuple[float, float] | None, bounds: tuple[list[float], list[float]] | None
) -> dict[str, Any] | None:
    """``data.clip`` as recorded in checkpoints and exports: percentiles and per-channel bounds."""
    if percentiles is None or bounds is None:
        return None
    return {"percentiles": list(percentiles), "low": bounds[0], "high": bounds[1]}


def resume_recipe(run_dir: str | Path, overrides: list[str]) -> Recipe:
    """The saved recipe of a run, with new overrides (e.g. ``trainer.max_epochs=20``)."""
    path = Path(run_dir) / "recipe.yaml"
    if latest_checkpoint(run_dir) is None:
        raise ConfigError(f"{run_dir}: no checkpoint in checkpoints/ to resume from")
    return load_recipe(path, overrides)
