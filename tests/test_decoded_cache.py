"""The decoded-image cache (``data.cache``): the reader's tensors exactly, bad files reported and
replaced as without it, ``auto`` choosing by size, no reading after the fill, DataLoader
workers sharing it."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folders
from PIL import Image
from test_config import MINIMAL, _error, _write
from torch.utils.data import DataLoader

from acclimate.config import load_recipe
from acclimate.data import ImageDataset, open_source, read_bad_file_log
from acclimate.data.datamodule import SSLDataModule
from acclimate.data.decoded_cache import DecodedCache, Survey, decoded_cache, survey, use_cache
from acclimate.data.sources import ImageSource


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _filled(source: ImageSource, skip_constant: bool = False, **kwargs) -> DecodedCache:
    layout = survey(source, skip_constant).layout
    return DecodedCache.fill(source, layout, skip_constant, progress=False, **kwargs)


def _assert_same_as_reader(cache: DecodedCache, source: ImageSource) -> None:
    for i in range(len(source)):
        cached, read = cache.get(i), source.load(i)
        assert cached.dtype == read.dtype and cached.shape == read.shape, source.describe(i)
        assert torch.equal(cached, read), source.describe(i)


@pytest.fixture
def rgb_source(tmp_path: Path) -> ImageSource:
    """12 RGB 16 x 16 PNGs (uint8)."""
    return open_source(make_class_folders(tmp_path / "rgb", n_train=4, n_val=1, size=16), "train")


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """RGB PNGs of three sizes and a grayscale one (read as RGB)."""
    root = tmp_path / "mixed"
    for j, (h, w) in enumerate([(8, 10), (12, 6), (8, 10), (5, 5), (8, 10), (12, 6)]):
        _save(root / f"{j}.png", _rgb(j, h, w))
    Image.fromarray(_rgb(9, 7, 9)[..., 0]).save(root / "9.png")
    return root


@pytest.fixture
def with_bad_files(tmp_path: Path) -> Path:
    """Good, truncated, not an image, blank, good, missing-after-listing: in that order."""
    root = tmp_path / "bad"
    _save(root / "0.png", _rgb(0, 8, 8))
    buffer = io.BytesIO()
    Image.fromarray(_rgb(1, 32, 32)).save(buffer, format="JPEG")
    (root / "1.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "2.jpg").write_text("this is not a jpeg")
    _save(root / "3.png", np.full((8, 8, 3), 7, dtype=np.uint8))
    _save(root / "4.png", _rgb(4, 8, 8))
    _save(root / "5.png", _rgb(5, 8, 8))
    return root


# --------------------------------------------------------------------------- same tensors


def test_uniform_rgb_is_one_tensor_equal_to_the_reader(rgb_source: ImageSource) -> None:
    cache = _filled(rgb_source)
    assert cache.images is not None and cache.images.shape == (12, 3, 16, 16)
    assert cache.images.dtype == torch.uint8 and not cache.extra and not cache.bad
    assert cache.nbytes == 12 * 3 * 16 * 16
    _assert_same_as_reader(cache, rgb_source)
    cache.get(0).zero_()  # a transform writing into its input leaves the cache alone
    assert torch.equal(cache.get(0), rgb_source.load(0))


def test_mixed_sizes_equal_the_reader(mixed_folder: Path) -> None:
    source = open_source(mixed_folder)
    cache = _filled(source)
    assert cache.images is None and len(cache.extra) == len(source)  # no one layout sampled
    _assert_same_as_reader(cache, source)
    # a layout from a sample of one kind: the others are kept apart, values unchanged
    cache = DecodedCache.fill(source, ((3, 8, 10), torch.uint8), progress=False)
    assert sorted(cache.extra) == [1, 3, 5, 6]
    assert cache.nbytes == sum(source.load(i).nbytes for i in range(len(source)))
    _assert_same_as_reader(cache, source)


def test_multiband_float_geotiffs_equal_the_reader(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    root = tmp_path / "s2"
    root.mkdir()
    rng = np.random.default_rng(0)
    for j in range(5):
        tile = rng.integers(0, 3000, (13, 12, 12)).astype(np.uint16)
        tifffile.imwrite(root / f"{j}.tif", tile, photometric="minisblack", planarconfig="separate")
    source = open_source(root, channels=13)
    cache = _filled(source)
    assert cache.images is not None and cache.images.dtype == torch.float32
    assert cache.images.shape == (5, 13, 12, 12)
    _assert_same_as_reader(cache, source)


def test_npz_size_from_the_headers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "m.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 256, (7, 9, 9, 3), dtype=np.uint8),
        val_images=rng.integers(0, 256, (3, 5, 5), dtype=np.uint8),
    )
    source = open_source(path, channels=3)  # both splits: 9 x 9 RGB and 5 x 5 gray as RGB
    found = survey(source)
    assert found.nbytes == 7 * 3 * 9 * 9 + 3 * 3 * 5 * 5 and found.basis == "from the array headers"
    cache = _filled(source)
    assert cache.nbytes == found.nbytes
    _assert_same_as_reader(cache, source)


def test_fill_with_workers_decodes_in_them(rgb_source: ImageSource, tmp_path: Path) -> None:
    pids = tmp_path / "pids.txt"
    read = rgb_source.load

    def load(i: int) -> torch.Tensor:
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return read(i)

    rgb_source.load = load  # type: ignore[method-assign]
    cache = _filled(rgb_source, num_workers=2, chunk=1)  # 12 chunks: 2 workers
    found = [int(p) for p in pids.read_text().split()]
    assert len(found) == 12 + 12  # the survey's sample in this process, then the fill
    assert len(set(found) - {os.getpid()}) == 2  # the fill ran in two worker processes
    rgb_source.load = read  # type: ignore[method-assign]
    _assert_same_as_reader(cache, rgb_source)


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("on_bad", ["next", "drop"])
def test_bad_files_reported_and_replaced_as_without_cache(
    with_bad_files: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, on_bad: str
) -> None:
    source = open_source(with_bad_files)
    names = [Path(source.describe(i)).name for i in range(len(source))]
    assert names == ["0.png", "1.jpg", "2.jpg", "3.png", "4.png", "5.png"]
    cache = _filled(source, skip_constant=True)
    assert sorted(cache.bad) == [1, 2, 3]
    results = {}
    for name, with_cache in (("plain", None), ("cached", cache)):
        log_file = tmp_path / name / "bad_files.txt"
        dataset = ImageDataset(
            source, bad_file_log=log_file, skip_constant=True, on_bad=on_bad, cache=with_cache
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            items = [dataset[i] for i in [*range(len(source)), 1, 2]]  # bad ones met twice
        warnings = [r.getMessage().split("; listed in")[0] for r in caplog.records]
        results[name] = (items, dict(dataset.bad), read_bad_file_log(log_file), warnings)
    plain, cached = results["plain"], results["cached"]
    assert plain[1] == cached[1] == {1: "truncated", 2: "unreadable", 3: "constant"}
    assert plain[2] == cached[2] and len(cached[2]) == 3  # the bad-file logs
    assert plain[3] == cached[3] and len(cached[3]) == 3  # one warning per file
    for i, (a, b) in enumerate(zip(plain[0], cached[0], strict=True)):
        if a is None:
            assert b is None, i
            continue
        assert a[1:] == b[1:] and torch.equal(a[0], b[0]), i
    if on_bad == "next":  # 1, 2 and 3 are bad: 4.png stands in for each
        assert all(torch.equal(cached[0][i][0], cached[0][4][0]) for i in (1, 2, 3))
    else:
        assert [item is None for item in cached[0]] == [0, 1, 1, 1, 0, 0, 1, 1]
    (with_bad_files / "5.png").unlink()  # after the fill: still served from memory
    image = ImageDataset(source, skip_constant=True, on_bad=on_bad, cache=cache)[5][0]
    assert torch.equal(image, torch.from_numpy(_rgb(5, 8, 8)).permute(2, 0, 1))


def test_a_cache_for_other_settings_is_refused(with_bad_files: Path) -> None:
    source = open_source(with_bad_files)
    with pytest.raises(ValueError, match="skip_constant True"):
        ImageDataset(source, skip_constant=False, cache=_filled(source, skip_constant=True))


# --------------------------------------------------------------------------- auto, none


def test_use_cache_compares_the_estimate_with_the_limit() -> None:
    found = Survey(10**9, "from 64 of 64 sampled images", ((3, 8, 8), torch.uint8))
    assert use_cache("auto", found, max_gb=2)[0]
    assert not use_cache("auto", found, max_gb=0.5)[0]
    fits, why = use_cache("auto", found, max_gb=2, processes=4)  # 0.5 GB each
    assert not fits and "1.00 GB decoded" in why and "> the limit 0.50 GB" in why
    assert use_cache("memory", found, max_gb=1e-6)[0]


def _datamodule(root: Path, **kwargs) -> SSLDataModule:
    dm = SSLDataModule(
        str(root), batch_size=4, num_workers=0, mean=[0.5] * 3, std=[0.2] * 3, **kwargs
    )
    dm.transform = lambda image: image.float() / 255
    return dm


def _cache_of(loader: DataLoader) -> DecodedCache | None:
    return loader.dataset.dataset.cache  # ResumableLoader -> SeededItems -> ImageDataset


def test_auto_streams_or_caches_by_size(
    tiny_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="acclimate.data.decoded_cache"):
        small = _datamodule(tiny_dataset, cache_max_gb=1e-9)
        assert _cache_of(small.train_dataloader()) is None
        assert "cache off, streaming: about 0.00 GB decoded (from 36 of 36 sampled" in caplog.text
        assert "the limit 0.00 GB (data.cache_max_gb: 1e-09)" in caplog.text
        caplog.clear()
        large = _datamodule(tiny_dataset, cache_max_gb=1.0)
        cache = _cache_of(large.train_dataloader())
        assert cache is not None and cache.images is not None and cache.images.shape[0] == 36
        assert "cache on: about 0.00 GB decoded" in caplog.text
    assert _cache_of(_datamodule(tiny_dataset).train_dataloader()) is not None  # default limit
    _assert_same_as_reader(cache, large.source)


def test_none_never_surveys(tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = _datamodule(tiny_dataset, cache="none")
    calls = []
    monkeypatch.setattr(dm.source, "load", lambda i: calls.append(i))
    assert _cache_of(dm.train_dataloader()) is None and calls == []
    assert decoded_cache(dm.source, "none") is None and calls == []


def test_second_epoch_reads_no_file(tiny_dataset: Path) -> None:
    dm = _datamodule(tiny_dataset, cache="memory")
    read, calls = dm.source.load, []

    def counted(i: int) -> torch.Tensor:
        calls.append(i)
        return read(i)

    dm.source.load = counted  # type: ignore[method-assign]
    loader = dm.train_dataloader()
    assert sorted(calls[36:]) == list(range(36))  # the survey's sample, then each image once
    assert _cache_of(dm.train_dataloader()) is _cache_of(loader)  # filled once per run
    n = len(calls)
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        epochs.append(torch.cat([images for images, _ in loader]))
    assert len(calls) == n
    assert epochs[0].shape == (36, 3, 32, 32) and not torch.equal(epochs[0], epochs[1])  # new order
    assert torch.equal(epochs[0].sum((1, 2, 3)).sort()[0], epochs[1].sum((1, 2, 3)).sort()[0])


def test_dataloader_workers_read_the_cache_not_the_files(rgb_source: ImageSource) -> None:
    expected = torch.stack([rgb_source.load(i) for i in range(len(rgb_source))])
    cache = _filled(rgb_source)

    def fail(i: int) -> torch.Tensor:
        raise AssertionError(f"item {i} read from its file")

    rgb_source.load = fail  # type: ignore[method-assign]
    dataset = ImageDataset(rgb_source, cache=cache)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True)
    for _ in range(2):
        images = torch.cat([batch[0] for batch in loader])
        assert torch.equal(images, expected)  # a read would be a bad file, replaced


# --------------------------------------------------------------------------- the recipe


def test_recipe_checks_the_cache_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", MINIMAL)
    assert load_recipe(path).data["data"]["cache"] == "auto"
    assert load_recipe(path, ["data.cache=none"]).data["data"]["cache"] == "none"
    message = _error(path, ("data.cache=mem",))
    assert message.startswith("the command line: data.cache: must be auto (decode into memory")
    assert message.endswith("or none (decode every epoch) (did you mean 'memory'?), got 'mem'")
    assert "data.cache_max_gb: must be > 0" in _error(path, ("data.cache_max_gb=0",))
    with pytest.raises(ValueError, match="cache must be one of auto, memory, none"):
        SSLDataModule(str(tmp_path), cache="disk")


def test_a_job_cgroup_below_the_root_limits_the_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch scheduler's job limit sits below the cgroup root (cgroup v2 ``0::/path``, v1
    ``N:memory:/path``): the smallest room left on the way up to the root counts."""
    from acclimate.data import decoded_cache as dc

    def write(folder: Path, limit: str, usage: int, v1: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        names = (
            ("memory.limit_in_bytes", "memory.usage_in_bytes")
            if v1
            else ("memory.max", "memory.current")
        )
        (folder / names[0]).write_text(limit + "\n")
        (folder / names[1]).write_text(f"{usage}\n")

    root = tmp_path / "cgroup"
    monkeypatch.setattr(dc, "CGROUP_ROOT", root)
    write(root, "max", 50 << 30)  # the root: no limit
    write(root / "slurm" / "job_7", str(16 << 30), 6 << 30)  # the job: 10 GiB left
    write(root / "slurm" / "job_7" / "step_0", "max", 6 << 30)
    proc = tmp_path / "cgroup.txt"
    proc.write_text("0::/slurm/job_7/step_0\n")
    real = dc._cgroup_files
    monkeypatch.setattr(dc, "_cgroup_files", lambda: real(str(proc)))
    assert dc.available_memory() <= 10 << 30
    proc.write_text("4:memory:/job_9\n1:cpu:/\n")  # cgroup v1
    write(root / "memory" / "job_9", str(3 << 30), 1 << 30, v1=True)
    assert dc.available_memory() <= 2 << 30
