"""The training data: one unlabelled (or labelled, labels unused) source, multi-crop views."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader, default_collate

from acclimate.data.dataset import ImageDataset, bad_file_counts, collate_kept
from acclimate.data.decoded_cache import DecodedCache, check_cache_mode, decoded_cache
from acclimate.data.readers import DEFAULT_MAX_PIXELS, DataError, ReadOptions, tiff_band_names
from acclimate.data.sources import (
    FileSource,
    ImageSource,
    check_source,
    list_splits,
    open_source,
)
from acclimate.data.stats import (
    cached_stats_file,
    check_clip,
    clip_stats,
    load_stats,
    save_stats,
    source_stats,
)
from acclimate.data.transforms import MultiCropTransform
from acclimate.malloc import keep_freed_memory
from acclimate.resume import ResumableLoader, trainer_position

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Normalization = list[float] | Literal["auto", "backbone"]


def resolve_split(spec: str, split: str | None) -> str | None:
    """``auto`` means the ``train`` split when the source has splits, else the whole source."""
    if split != "auto":
        return split
    return "train" if "train" in list_splits(spec) else None


def _check_arguments(
    channels: int,
    bands: list | None,
    max_bad_fraction: float,
    stats: dict[str, Normalization],
    cache: str,
    cache_max_gb: float | None,
) -> None:
    """The constructor's own checks (`ReadOptions` checks window, nodata_fill, max_pixels)."""
    check_cache_mode(cache)
    if cache_max_gb is not None and not cache_max_gb > 0:
        raise ValueError(f"cache_max_gb must be > 0 or null, got {cache_max_gb}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if bands is not None and len(bands) != channels:
        raise ValueError(f"bands lists {len(bands)} bands but channels is {channels}")
    if not 0 <= max_bad_fraction < 1:
        raise ValueError(f"max_bad_fraction must be in [0, 1), got {max_bad_fraction}")
    for name, value in stats.items():
        if isinstance(value, list) and len(value) != channels:
            raise ValueError(f"{name} has {len(value)} values but channels is {channels}")


class SSLDataModule(pl.LightningDataModule):
    """Training images for self-supervised learning.

    Args:
        train: the training source: a class-folder tree (with or without split folders), a flat
            folder of images, a CSV manifest or a MedMNIST-style .npz (`acclimate.data.sources`).
        train_split: which split to train on; ``auto`` = ``train`` when the source has splits (so
            held-out splits stay held out), else everything; null = every split.
        channels: bands per image: 1 (grayscale) or 3 (RGB) convert on read; any other count
            (e.g. 13 for Sentinel-2) must match the file's bands or ``bands``.
        bands: bands to keep, in order: 0-based indices or names (``band_names``, else the
            GeoTIFF's band descriptions); null keeps all. Recorded in the export.
        band_names: names of the file's bands in order, e.g. [B01, B02, ..., B12]; set it
            when the files carry none and you select by name or want names in the export.
        window: [centre, width] in raw or physical units (HU for CT) mapping values to [0, 1];
            null: DICOM uses the file's window, other formats their documented scaling.
        slice_axis: NIfTI volumes are cut into 2D slices along this axis.
        nodata: a stored value that means "no data" in your files (e.g. -9999, or 0 for an 8-bit
            GeoTIFF's empty border), compared with the values as the file stores them. NaN,
            +/-inf, |v| >= 3.4e38 (GDAL's float nodata) and the file's GDAL_NODATA tag are
            always missing; set this only when the files use another value without the tag.
            Missing values never enter the statistics; a tile with more than half of its values
            missing is skipped (reason ``nodata`` in bad_files.txt).
        nodata_fill: what missing values become before normalisation: ``mean`` (the channel
            mean used for normalisation, the data's own with ``mean: auto``, so they become 0;
            recorded in the export) or a number in the readers' units. Change it when a
            constant such as 0 means "nothing here" to the model better than the mean.
        max_pixels: images declaring more pixels (width x height, from the header, before
            decoding) are skipped as ``too large``: decompression bombs and whole scenes that
            would exhaust memory. The default, 8192 x 8192 (67 M), is below PIL's own limit;
            raise it for larger single images (a Sentinel-2 granule is 10980 x 10980, 121 M).
        image_size: side of the global crops and of evaluation/export inputs.
        mean, std: per-channel normalisation in [0, 1] units; ``auto`` computes them from the
            training images (recorded in the run folder and the export), ``backbone`` uses the
            backbone's pretraining statistics (ImageNet's for most timm weights).
            ``auto`` reads ``stats`` when given, else what ``acclimate stats`` cached for
            this source, else computes them (and caches them).
        clip: percentile bounds ``[low, high]``, e.g. ``[1, 99]``: every channel is clipped to
            its own low-th and high-th percentile of the training data (from the statistics,
            as for ``mean: auto``) before normalisation, in training, evaluation and the export
            (``acclimate.load`` applies it; ``acclimate.json`` records the bounds). With ``mean``
            or ``std`` ``auto`` they are the statistics of the clipped values. null: no clipping.
        stats: a statistics file written by ``acclimate stats SRC --out FILE``.
        stats_images: images sampled to compute ``auto`` statistics.
        batch_size: images per device per step.
        num_workers: DataLoader worker processes (the per-image augmentation runs there, and
            the per-batch one with ``augment.device: cpu``).
        cache: ``memory``: decode every training image once, before training (with
            ``num_workers`` processes), and augment from memory every epoch; ``none``: decode
            from the files every epoch; ``auto``: ``memory`` when the decoded images (estimated
            from a sample of 64, or the ``.npz`` headers) fit in ``cache_max_gb``, else
            ``none``. Every training process holds its own copy. Set ``none`` when memory is
            short, ``memory`` when decoding is the bottleneck and the images fit.
        cache_max_gb: the limit of ``cache: auto``, in GB, for all training processes of one
            machine together; null: 25% of the memory available when training starts, at
            most 32 GB.
        max_bad_fraction: fail before training when more than this fraction of a sample of the
            source cannot be used.
        skip_constant: skip images whose values are all equal (blank tiles, no-data areas).
    """

    def __init__(
        self,
        train: str,
        train_split: str | None = "auto",
        channels: int = 3,
        bands: list[int | str] | None = None,
        band_names: list[str] | None = None,
        window: list[float] | None = None,
        slice_axis: int = 2,
        nodata: float | None = None,
        nodata_fill: float | Literal["mean"] = "mean",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        image_size: int = 224,
        mean: Normalization = "auto",
        std: Normalization = "auto",
        clip: list[float] | None = None,
        stats: str | None = None,
        stats_images: int = 5000,
        batch_size: int = 64,
        num_workers: int = 2,
        cache: str = "auto",
        cache_max_gb: float | None = None,
        max_bad_fraction: float = 0.5,
        skip_constant: bool = True,
        transform: Callable[[Any], Any] | None = None,
        bad_file_log: str | Path | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(
            channels, bands, max_bad_fraction, {"mean": mean, "std": std}, cache, cache_max_gb
        )
        self.spec = train
        self.split = resolve_split(train, train_split)
        self.channels = channels
        self.options = ReadOptions(
            bands=bands,
            band_names=band_names,
            window=window,
            slice_axis=slice_axis,
            nodata=nodata,
            nodata_fill=nodata_fill,
            max_pixels=max_pixels,
        )
        self.image_size = image_size
        self.mean, self.std = mean, std
        self.clip = None if clip is None else check_clip(clip)
        self.stats_file = stats
        self.stats: dict[str, Any] | None = None  # filled when statistics are read or computed
        self.stats_images = stats_images
        self.skip_constant = skip_constant
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache, self.cache_max_gb = cache, cache_max_gb
        self._decoded: DecodedCache | None = None  # filled by the first train_dataloader
        self._decided = False  # whether that choice was made (auto may choose to stream)
        self.transform = transform
        self._batch_on_device = False  # augment.device auto with an accelerator (train_dataloader)
        self.seed = 0  # the run's seed (set by training): data order and augmentation
        self.bad_file_log = bad_file_log
        self.source: ImageSource = open_source(
            train, self.split, channels=channels, options=self.options
        )
        self.bad_counts = check_source(
            self.source,
            min_good_fraction=1.0 - max_bad_fraction,
            skip_constant=skip_constant,
            bad_file_log=bad_file_log,
        )
        log.info("training source: %s, %d images", self.source.name, len(self.source))

    @property
    def band_names(self) -> list[str] | None:
        """Names of the training bands in order (for the export); None for plain gray/RGB."""
        names = self.options.band_names
        if names is None and isinstance(self.source, FileSource) and len(self.source):
            first = self.source.paths[0]
            if first.lower().endswith((".tif", ".tiff")) and self.channels not in (1, 3):
                try:
                    names = tiff_band_names(first)
                except Exception as exc:  # a bad first file: no names
                    log.debug("no band names from %s: %s", first, exc)
        names = list(names) if names is not None else None
        if self.options.bands is not None:
            return [
                b if isinstance(b, str) else (names[b] if names else f"band{b}")
                for b in self.options.bands
            ]
        if names is not None and len(names) == self.channels:
            return names
        return None if self.channels in (1, 3) else [f"band{i}" for i in range(self.channels)]

    def statistics(self) -> dict[str, Any]:
        """Per-channel statistics: the ``stats`` file, else the cache of ``acclimate stats``
        for this source, else computed over ``stats_images`` images (and cached). With
        ``clip``, they include ``clip`` (bounds and the clipped values' mean/std)."""
        if self.stats is None:
            self.stats = self._read_statistics()
        if self.clip is not None:
            stats = clip_stats(self.source, self.stats, self.clip, max_images=self.stats_images)
            if stats is not self.stats and self.stats_file is None:
                self._cache(stats)  # the clipped pass is reused by the next run
            self.stats = stats
        return self.stats

    def _cache(self, stats: dict[str, Any]) -> None:
        cache = cached_stats_file(self.spec, self.split, self.channels, self.options)
        if cache is not None:
            try:
                save_stats(cache, stats)
            except OSError as exc:
                log.warning("could not cache statistics in %s: %s", cache, exc)

    def _read_statistics(self) -> dict[str, Any]:
        if self.stats_file is not None:
            log.info("statistics from %s", self.stats_file)
            return load_stats(self.stats_file, self.channels)
        cache = cached_stats_file(self.spec, self.split, self.channels, self.options)
        if cache is not None and cache.exists():
            try:
                cached = load_stats(cache, self.channels)
                if cached.get("n_images") == len(self.source):
                    log.info("statistics from the cache %s (`acclimate stats`)", cache)
                    return cached
                log.info("cached statistics %s are for another image count: recomputing", cache)
            except DataError as exc:
                log.warning("ignoring cached statistics: %s", exc)
        log.info("computing channel statistics over up to %d images", self.stats_images)
        stats = source_stats(self.source, max_images=self.stats_images, clip=self.clip)
        self._cache(stats)
        return stats

    def clip_range(self) -> tuple[list[float], list[float]] | None:
        """Per-channel (low, high) bounds of ``clip`` from the statistics; None without clip."""
        if self.clip is None:
            return None
        entry = self.statistics()["clip"]
        return [float(v) for v in entry["low"]], [float(v) for v in entry["high"]]

    def normalization(self, backbone_cfg: dict | None = None) -> tuple[list[float], list[float]]:
        """Resolve ``mean``/``std``: given lists, the backbone's, or from the data's statistics.

        With ``nodata_fill: mean`` this also fixes the fill of missing values to the mean
        returned, in ``options`` and the source (so training, the evaluation sources opened
        with ``options`` and the export's ``reader`` all fill alike)."""
        mean, std = self._normalization(backbone_cfg)
        if self.options.nodata_fill == "mean":
            self.options = dataclasses.replace(self.options, nodata_fill=tuple(mean))
            if isinstance(self.source, FileSource):
                self.source.options = self.options
        return mean, std

    def _normalization(self, backbone_cfg: dict | None) -> tuple[list[float], list[float]]:
        if isinstance(self.mean, list) and isinstance(self.std, list):
            return [float(m) for m in self.mean], [float(s) for s in self.std]
        if "backbone" in (self.mean, self.std):
            cfg = backbone_cfg or {}
            mean = list(cfg.get("mean", IMAGENET_MEAN))
            std = list(cfg.get("std", IMAGENET_STD))
            if len(mean) != self.channels:  # RGB statistics for other band counts: their average
                mean = [sum(mean) / len(mean)] * self.channels
                std = [sum(std) / len(std)] * self.channels
        else:  # of the clipped values when clipping
            stats = self.statistics()
            stats = stats["clip"] if self.clip is not None else stats
            mean, std = stats["mean"], stats["std"]
        mean = self.mean if isinstance(self.mean, list) else mean
        std = self.std if isinstance(self.std, list) else std
        return [float(m) for m in mean], [float(s) for s in std]

    def train_dataloader(self) -> DataLoader:
        """Shuffled multi-crop batches, resumable mid-epoch (`acclimate.resume`): the order and
        each item's augmentation are functions of (``seed``, epoch, index)."""
        if self.transform is None:
            raise RuntimeError("SSLDataModule.transform must be set before training")
        item, collate = self._augment_stages()
        workers = min(self.num_workers, os.cpu_count() or 1)
        dataset = ImageDataset(
            self.source,
            item,
            bad_file_log=self.bad_file_log,
            skip_constant=self.skip_constant,
            cache=self._decoded_cache(workers),
        )
        trainer = self.trainer
        return ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            seed=self.seed,
            position=lambda: trainer_position(trainer),
            drop_last=len(dataset) >= self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=False,
            collate_fn=collate,
            worker_init_fn=keep_freed_memory if workers > 0 else None,
        )

    def _decoded_cache(self, workers: int) -> DecodedCache | None:
        """The decoded training images (``cache``), chosen and filled on the first call: after
        ``normalization`` has fixed the nodata fill that the reader applies, and in the main
        process before the training loader's workers fork and share it."""
        if not self._decided:
            trainer = self.trainer  # None, or a stub, outside a Trainer
            per_node = getattr(trainer, "world_size", 1) // max(getattr(trainer, "num_nodes", 1), 1)
            bar = trainer is None or getattr(trainer, "progress_bar_callback", None) is not None
            self._decoded = decoded_cache(
                self.source,
                self.cache,
                self.skip_constant,
                workers,
                self.cache_max_gb,
                processes=max(per_node, 1),
                progress=bar,
            )
            self._decided = True
        return self._decoded

    def _augment_stages(self) -> tuple[Callable[[Any], Any], Callable[[list], Any] | None]:
        """The per-item transform and the loader's collate function for ``augment.device``
        (`transforms.MultiCropTransform`); sets whether the batch stage runs after the transfer
        (``auto`` with an accelerator: `on_after_batch_transfer`)."""
        tf = self.transform
        self._batch_on_device = False
        if not isinstance(tf, MultiCropTransform) or not tf.batched:
            return tf, None
        trainer = self.trainer
        accelerated = trainer is not None and trainer.strategy.root_device.type != "cpu"
        self._batch_on_device = tf.device == "auto" and accelerated
        return tf.sample, None if self._batch_on_device else AugmentCollate(tf.batch)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``augment.device: auto`` on an accelerator: the photometric ops of the whole batch,
        on the device, then the precision plugin's input cast (which ran on the uint8 views
        before the transfer)."""
        if not self._batch_on_device:
            return batch
        views, *rest = batch
        assert isinstance(self.transform, MultiCropTransform)
        views = self.transform.batch(views)
        trainer = self.trainer
        if trainer is not None:
            views = trainer.precision_plugin.convert_input(views)
        return [views, *rest]

    def teardown(self, stage: str) -> None:
        """Log the bad items of the run per reason and write them beside the list file."""
        if self.bad_file_log is None or not Path(self.bad_file_log).exists():
            return
        counts = bad_file_counts(self.bad_file_log)
        summary = Path(self.bad_file_log).with_suffix(".json")
        summary.write_text(json.dumps({"counts": counts, "list": str(self.bad_file_log)}) + "\n")
        log.warning(
            "skipped %d bad item(s) of %s: %s (listed in %s)",
            sum(counts.values()),
            self.source.name,
            ", ".join(f"{r} {c}" for r, c in sorted(counts.items())),
            self.bad_file_log,
        )


class AugmentCollate:
    """``default_collate``, then the batch stage of the views (``augment.device: cpu``):
    ``(views, label)`` items -> ``[batch(views), labels]``. Runs where the loader collates
    (its worker processes when there are some)."""

    def __init__(self, batch: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.batch = batch

    def __call__(self, items: list[Any]) -> list[Any]:
        views, *rest = default_collate(items)
        return [self.batch(views), *rest]


class EvalLoader(DataLoader):
    """A DataLoader that leaves out batches in which every item was unreadable (``None``)."""

    def __iter__(self) -> Any:
        return (batch for batch in super().__iter__() if batch is not None)


def eval_loader(
    source: ImageSource,
    transform: Callable[[Any], Any],
    batch_size: int = 128,
    num_workers: int = 2,
    bad_file_log: str | Path | None = None,
) -> DataLoader:
    """A deterministic loader over a labelled source, for features (kNN, probes, embeddings).

    Batches are ``(images, labels, indices)``: unreadable items are left out (never replaced by
    another image), ``indices`` are the source positions of the items kept.
    """
    dataset = ImageDataset(source, transform, bad_file_log=bad_file_log, on_bad="drop")
    workers = min(num_workers, os.cpu_count() or 1)
    return EvalLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_kept
    )


def describe_normalization(mean: Sequence[float], std: Sequence[float]) -> str:
    return (
        "mean "
        + ", ".join(f"{m:.4f}" for m in mean)
        + " / std "
        + ", ".join(f"{s:.4f}" for s in std)
    )
