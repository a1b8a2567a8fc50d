"""A run's evidence: the labelled evaluation sources, the starting backbone measured before
training and the adapted one after it with the same protocol, and the one-line summary."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from torch import nn

from acclimate.config import Recipe, construct, recipe_error
from acclimate.data.datamodule import SSLDataModule
from acclimate.data.dataset import read_bad_file_log
from acclimate.data.sources import canonical_split
from acclimate.data.transforms import EvalTransform
from acclimate.errors import AcclimateError
from acclimate.eval.features import check_kind
from acclimate.eval.protocol import (
    EvalSettings,
    evaluate_backbone,
    held_out_split,
    labelled_splits,
)
from acclimate.export.blend import ExportSettings, blended_copy, start_state
from acclimate.fileio import write_json_atomic
from acclimate.ssl import SSLModule

log = logging.getLogger(__name__)


TEST_SEEN_WARNING = (
    "the evaluation test images are part of the training source: self-supervised training saw "
    "them (without labels), so the held-out accuracies are optimistic; give the source a "
    "train/test split (data.train_split: auto) or a separate eval.data to hold them out"
)


def _same_source(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def eval_sources(recipe: Recipe, dm: SSLDataModule) -> tuple[tuple[Any, Any] | None, bool]:
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


class Normalization(NamedTuple):
    """Per-channel mean and std resolved on the training data, and ``data.clip``'s bounds."""

    mean: list[float]
    std: list[float]
    clip: tuple[list[float], list[float]] | None


@dataclass
class Evaluation:
    """The before/after protocol's settings, labelled sources (None: no labelled data),
    transform and normalisation, whether the test images were among the training images, and
    ``export.start_blend`` with a CPU copy of the start's state when it is below 1 (what is
    measured after training is what is exported)."""

    settings: EvalSettings
    sources: tuple[Any, Any] | None
    test_images_seen: bool
    transform: EvalTransform
    norm: Normalization
    start_blend: float = 1.0
    start: dict[str, torch.Tensor] | None = None
    measured_with: dict[str, Any] = field(default_factory=dict)  # what `before` depends on

    def exported(self, module: SSLModule) -> nn.Module:
        """The backbone the run exports: the method's, blended with the start when asked."""
        model = module.export_backbone()
        if self.start is None:
            return model
        return blended_copy(model, self.start, self.start_blend)


def build_evaluation(
    recipe: Recipe, dm: SSLDataModule, start: nn.Module, norm: Normalization
) -> Evaluation:
    """The evaluation settings (their feature kind checked against the start, one line before
    any work), the labelled sources and the evaluation transform."""
    eval_settings = EvalSettings(**recipe.section("eval"))
    try:  # one line before any work: the backbone cannot give these features
        check_kind(start, eval_settings.features)
    except AcclimateError as e:
        raise recipe_error(recipe, "eval.features", str(e)) from None
    sources, test_images_seen = eval_sources(recipe, dm)
    mean, std, clip = norm
    eval_tf = EvalTransform(dm.image_size, mean, std, clip)
    keep = construct(recipe, "export", ExportSettings).start_blend
    start_copy = start_state(start) if keep != 1.0 else None
    measured_with = {  # as JSON gives it back, to compare with a resumed run's record
        "protocol": eval_settings.as_record(),
        "data": eval_settings.data,
        "reference_size": eval_settings.reference_size,
        "image_size": dm.image_size,
        "normalization": list(norm),
    }
    measured_with = json.loads(json.dumps(measured_with))
    return Evaluation(
        eval_settings, sources, test_images_seen, eval_tf, norm, keep, start_copy, measured_with
    )


def before_evaluation(
    start: nn.Module,
    device: torch.device,
    ev: Evaluation,
    trainer: pl.Trainer,
    metrics: dict[str, Any],
    metrics_path: Path,
    do_eval: bool,
) -> float:
    """Record whether the test images were trained on, and measure the start (unless a resumed
    run already did); return the seconds that took (the after-evaluation takes as long)."""
    sources, eval_tf, eval_settings = ev.sources, ev.transform, ev.settings
    mean, std, clip = ev.norm
    if sources is not None and trainer.is_global_zero:
        metrics["test_images_seen_in_pretraining"] = ev.test_images_seen  # saved with the results
        if ev.test_images_seen:
            write_json_atomic(metrics_path, metrics)
    evaluated, eval_s = time.monotonic(), float(metrics.get("before_seconds", 0.0))
    recorded = metrics.get("before_with")
    if do_eval and "before" in metrics and recorded is not None and recorded != ev.measured_with:
        changed = sorted(k for k in ev.measured_with if recorded.get(k) != ev.measured_with[k])
        log.info(
            "the evaluation changed since the start was measured (%s): measuring it "
            "again, so that before and after share one protocol",
            ", ".join(changed),
        )
        for k in ("before", "start_at_reference_size", "after", "delta", "after_of"):
            metrics.pop(k, None)
    if do_eval and "before" not in metrics:
        log.info("measuring the starting backbone (frozen features, kNN + linear probe)")
        metrics["before"], _ = evaluate_backbone(
            start, *sources, eval_tf, eval_settings, device=device
        )
        eval_s = time.monotonic() - evaluated  # what the after-evaluation will take again
        metrics["before_seconds"] = round(eval_s, 1)  # a resumed run keeps its reserve for it
        metrics["before_with"] = ev.measured_with
        write_json_atomic(metrics_path, metrics)
        log.info("before: %s", metrics["before"])
        size = eval_settings.reference_size
        if size:  # the start fed the images upsampled: what it knows but does not show
            log.info("measuring the starting backbone on images resized to %d px", size)
            ref_tf = EvalTransform(size, mean, std, clip)
            metrics["start_at_reference_size"], _ = evaluate_backbone(
                start, *sources, ref_tf, eval_settings, device=device
            )
            metrics["start_at_reference_size"]["image_size"] = size
            write_json_atomic(metrics_path, metrics)
            log.info("the start at %d px: %s", size, metrics["start_at_reference_size"])
    return eval_s


def after_training(
    module: SSLModule,
    ev: Evaluation,
    trainer: pl.Trainer,
    run_dir: Path,
    metrics: dict[str, Any],
    metrics_path: Path,
    do_eval: bool,
) -> None:
    """The skipped files counted, the adapted backbone measured with the same protocol and
    the before -> after deltas saved and logged."""
    sources, eval_tf, eval_settings = ev.sources, ev.transform, ev.settings
    bad = read_bad_file_log(run_dir / "bad_files.txt")
    if bad:
        log.warning(
            "%d unreadable file(s) were skipped; list in %s", len(bad), run_dir / "bad_files.txt"
        )
        metrics["bad_files"] = len(bad)
        write_json_atomic(metrics_path, metrics)
    if do_eval:
        log.info("measuring the adapted backbone with the same protocol")
        if ev.start is not None:
            keep = ev.start_blend
            log.info("export.start_blend %g: start + %g x (adapted - start)", keep, keep)
            metrics["start_blend"] = ev.start_blend
        metrics["after"], _ = evaluate_backbone(
            ev.exported(module), *sources, eval_tf, eval_settings, device=module.device
        )
        # what was measured, so that an export of other weights does not carry these figures
        network = "student" if module.export_backbone() is module.backbone else "EMA teacher"
        metrics["after_of"] = {"network": network, "step": trainer.global_step}
        metrics["delta"] = {
            k: metrics["after"][k] - metrics["before"][k] for k in ("knn_top1", "linear_top1")
        }
        write_json_atomic(metrics_path, metrics)
        for lg in trainer.loggers:
            lg.log_metrics(
                {f"final/{k}_delta": v for k, v in metrics["delta"].items()},
                step=trainer.global_step,
            )
