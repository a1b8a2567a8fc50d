"""The training data: one unlabelled (or labelled, labels unused) source, multi-crop views."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from acclimate.data.dataset import ImageDataset
from acclimate.data.sources import ImageSource, check_source, list_splits, open_source
from acclimate.data.stats import channel_stats

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Normalization = list[float] | Literal["auto", "backbone"]


def resolve_split(spec: str, split: str | None) -> str | None:
    """``auto`` means the ``train`` split when the source has splits, else the whole source."""
    if split != "auto":
        return split
    return "train" if "train" in list_splits(spec) else None


class SSLDataModule(pl.LightningDataModule):
    """Training images for self-supervised learning.

    Args:
        train: the training source: a class-folder tree (with or without split folders), a flat
            folder of images, a CSV manifest or a MedMNIST-style .npz (see DESIGN.md).
        train_split: which split to train on; ``auto`` = ``train`` when the source has splits (so
            held-out splits stay held out), else everything; null = every split.
        channels: 1 (grayscale) or 3 (RGB); images are converted on read.
        image_size: side of the global crops and of evaluation/export inputs.
        mean, std: per-channel normalisation in [0, 1] units; ``auto`` computes them from the
            training images (recorded in the run folder and the export), ``backbone`` uses the
            backbone's pretraining statistics (ImageNet's for most timm weights).
        stats_images: images sampled to compute ``auto`` statistics.
        batch_size: images per device per step.
        num_workers: DataLoader worker processes (augmentation runs there).
        max_bad_fraction: fail before training when more than this fraction of a sample of the
            source cannot be decoded.
    """

    def __init__(
        self,
        train: str,
        train_split: str | None = "auto",
        channels: int = 3,
        image_size: int = 224,
        mean: Normalization = "auto",
        std: Normalization = "auto",
        stats_images: int = 5000,
        batch_size: int = 64,
        num_workers: int = 2,
        max_bad_fraction: float = 0.5,
        transform: Callable[[Any], Any] | None = None,
        bad_file_log: str | Path | None = None,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3 for image files, got {channels}")
        if not 0 <= max_bad_fraction < 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1), got {max_bad_fraction}")
        for name, value in (("mean", mean), ("std", std)):
            if isinstance(value, list) and len(value) != channels:
                raise ValueError(f"{name} has {len(value)} values but channels is {channels}")
        self.spec = train
        self.split = resolve_split(train, train_split)
        self.channels = channels
        self.image_size = image_size
        self.mean, self.std = mean, std
        self.stats_images = stats_images
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.transform = transform
        self.bad_file_log = bad_file_log
        self.source: ImageSource = open_source(train, self.split, channels=channels)
        check_source(self.source, min_good_fraction=1.0 - max_bad_fraction)
        log.info("training source: %s, %d images", self.source.name, len(self.source))

    def normalization(self, backbone_cfg: dict | None = None) -> tuple[list[float], list[float]]:
        """Resolve ``mean``/``std``: given lists, the backbone's, or computed from the data."""
        if isinstance(self.mean, list) and isinstance(self.std, list):
            return list(self.mean), list(self.std)
        if "backbone" in (self.mean, self.std):
            cfg = backbone_cfg or {}
            mean = list(cfg.get("mean", IMAGENET_MEAN))
            std = list(cfg.get("std", IMAGENET_STD))
            if self.channels == 1:
                mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        else:
            log.info("computing channel statistics over up to %d images", self.stats_images)
            mean, std = channel_stats(self.source, max_images=self.stats_images)
        mean = self.mean if isinstance(self.mean, list) else mean
        std = self.std if isinstance(self.std, list) else std
        return [float(m) for m in mean], [float(s) for s in std]

    def train_dataloader(self) -> DataLoader:
        if self.transform is None:
            raise RuntimeError("SSLDataModule.transform must be set before training")
        dataset = ImageDataset(self.source, self.transform, bad_file_log=self.bad_file_log)
        workers = min(self.num_workers, os.cpu_count() or 1)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(dataset) >= self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=False,
        )


def eval_loader(
    source: ImageSource,
    transform: Callable[[Any], Any],
    batch_size: int = 128,
    num_workers: int = 2,
    bad_file_log: str | Path | None = None,
) -> DataLoader:
    """A deterministic loader over a labelled source, for features (kNN, probes, embeddings)."""
    dataset = ImageDataset(source, transform, bad_file_log=bad_file_log)
    workers = min(num_workers, os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


def describe_normalization(mean: Sequence[float], std: Sequence[float]) -> str:
    return (
        "mean "
        + ", ".join(f"{m:.4f}" for m in mean)
        + " / std "
        + ", ".join(f"{s:.4f}" for s in std)
    )
