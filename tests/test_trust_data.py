"""Trust, the data half (issue 9): nodata values, non-finite floats, decompression bombs and
broken files never poison statistics, features or a run; each is a listed skip or one clear line.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from acclimate.data import DataError, ImageDataset, check_source, open_source
from acclimate.data.datamodule import SSLDataModule, eval_loader
from acclimate.data.dataset import bad_file_counts, read_bad_file_log
from acclimate.data.readers import (
    BAD_REASONS,
    DEFAULT_MAX_PIXELS,
    BadImage,
    ReadOptions,
    read_image,
)
from acclimate.data.stats import source_stats
from acclimate.data.transforms import EvalTransform, MultiCropTransform
from acclimate.errors import AcclimateError
from acclimate.eval.protocol import (
    EvalSettings,
    evaluate_backbone,
    labelled_splits,
    split_features,
)
from acclimate.eval.report import ReportSettings, measure_features
from acclimate.export.load import reader_options

tifffile = pytest.importorskip("tifffile")

GDAL_FLOAT_NODATA = np.float32(-3.4028235e38)  # -FLT_MAX, what GDAL writes into empty areas


# ----------------------------------------------------------------------------- helpers


def _png(path: Path, seed: int, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _tif(path: Path, array: np.ndarray, nodata_tag: str | None = None) -> Path:
    """A TIFF as GDAL writes one; ``nodata_tag`` is GDAL_NODATA (tag 42113, ASCII)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extratags = [(42113, "s", 0, nodata_tag, True)] if nodata_tag is not None else []
    planar = "separate" if array.ndim == 3 else None  # (bands, H, W), as GDAL stores bands
    tifffile.imwrite(
        path, array, photometric="minisblack", planarconfig=planar, extratags=extratags
    )
    return path


def _values(seed: int, size: int = 16) -> np.ndarray:
    """Float tile in [0, 1], distributed like the PNGs' pixels / 255."""
    return np.random.default_rng(seed).uniform(0, 1, (size, size)).astype(np.float32)


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A real 4 x 4 PNG whose IHDR (with a correct CRC) declares width x height."""
    buffer = BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC of type + data
    path.write_bytes(bytes(data))
    return path


def _tif_claiming(path: Path, width: int, height: int) -> Path:
    """A real 4 x 4 float TIFF whose ImageWidth/ImageLength tags declare width x height."""
    _tif(path, _values(0, 4))
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        where = {code: (tags[code].valueoffset, tags[code].dtype) for code in (256, 257)}
    data = bytearray(path.read_bytes())
    for code, value in ((256, width), (257, height)):
        offset, dtype = where[code]
        data[offset : offset + 4 if dtype == 4 else offset + 2] = struct.pack(
            "<I" if dtype == 4 else "<H", value
        )
    path.write_bytes(bytes(data))
    return path


def _index(source, name: str) -> int:
    return next(i for i in range(len(source)) if source.describe(i).endswith(name))


def _one_line(exc: BaseException) -> None:
    assert isinstance(exc, AcclimateError) and "\n" not in str(exc) and str(exc)


@pytest.fixture
def nodata_folder(tmp_path: Path) -> Path:
    """36 RGB PNGs + float TIFFs as the user's: one mostly GDAL nodata, one partly, one with
    the GDAL_NODATA tag set to -9999."""
    root = tmp_path / "tiles"
    for k in range(36):
        _png(root / f"png{k:02d}.png", k)
    mostly = _values(100)
    mostly[:13] = GDAL_FLOAT_NODATA  # 81% nodata
    _tif(root / "mostly.tif", mostly)
    part = _values(101)
    part[:4] = GDAL_FLOAT_NODATA  # 25% nodata
    _tif(root / "part.tif", part)
    tagged = _values(102)
    tagged[10:] = -9999.0  # 37.5% nodata by the file's own tag
    _tif(root / "tagged.tif", tagged, nodata_tag="-9999")
    return root


def _clean_values(root: Path) -> np.ndarray:
    """(3, N) float64: every valid value of the folder, as the statistics must see them."""
    cols = [
        np.asarray(Image.open(p), np.float64).reshape(-1, 3).T / 255.0
        for p in sorted(root.glob("*.png"))
    ]
    for name, valid in (("part.tif", np.s_[4:]), ("tagged.tif", np.s_[:10])):
        if not (root / name).exists():
            continue
        v = tifffile.imread(root / name)[valid].astype(np.float64).reshape(1, -1)
        cols.append(np.repeat(v, 3, axis=0))  # one band read as RGB
    return np.concatenate(cols, axis=1)


# ----------------------------------------------------------------------------- nodata


def test_nodata_tile_never_poisons_statistics(nodata_folder: Path, caplog) -> None:
    source = open_source(nodata_folder, channels=3)
    with caplog.at_level(logging.WARNING):
        stats = source_stats(source)
    expected = _clean_values(nodata_folder)
    np.testing.assert_allclose(stats["mean"], expected.mean(1), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], expected.std(1), rtol=1e-7)
    np.testing.assert_allclose(stats["min"], expected.min(1), rtol=1e-6)
    np.testing.assert_allclose(stats["percentiles"]["99"], np.percentile(expected, 99, axis=1))
    png_only = source_stats(open_source(nodata_folder, channels=3).subset(range(36)))
    np.testing.assert_allclose(stats["mean"], png_only["mean"], atol=0.01)
    np.testing.assert_allclose(stats["std"], png_only["std"], atol=0.01)
    assert stats["unreadable"] == 1 and stats["sampled"] == 38  # mostly.tif is skipped
    assert stats["nodata_values"] == 3 * (64 + 96)
    assert sorted(Path(f).name for f in stats["nodata_files"]) == ["part.tif", "tagged.tif"]
    assert "part.tif holds 192 nodata" in caplog.text and "mostly.tif" in caplog.text


def test_nodata_is_skipped_filled_and_recorded_in_a_run(nodata_folder: Path, tmp_path) -> None:
    log_file = tmp_path / "run" / "bad_files.txt"
    dm = SSLDataModule(
        str(nodata_folder), channels=3, image_size=16, num_workers=0, bad_file_log=log_file
    )
    assert dm.bad_counts == {"nodata": 1}
    mean, std = dm.normalization()
    np.testing.assert_allclose(mean, _clean_values(nodata_folder).mean(1), rtol=1e-9)
    assert dm.options.nodata_fill == tuple(mean)  # recorded in the export's "reader"

    part = dm.source.load(_index(dm.source, "part.tif"))
    raw = tifffile.imread(nodata_folder / "part.tif")
    assert part.dtype == torch.float32 and bool(torch.isfinite(part).all())
    for c in range(3):  # nodata rows hold the channel mean, the rest is untouched
        torch.testing.assert_close(part[c, :4], torch.full((4, 16), mean[c]))
        torch.testing.assert_close(part[c, 4:], torch.from_numpy(raw[4:]))
    tagged = dm.source.load(_index(dm.source, "tagged.tif"))
    torch.testing.assert_close(tagged[1, 10:], torch.full((6, 16), mean[1]))

    # acclimate.load reads files with the export's reader options: the same fill
    options = reader_options({"reader": json.loads(json.dumps(dm.options.to_dict()))})
    assert options == dm.options
    torch.testing.assert_close(read_image(nodata_folder / "part.tif", 3, options), part)
    # the tifffile path (band selection) reads the tag and fills alike
    gray = read_image(nodata_folder / "tagged.tif", 1, ReadOptions(bands=(0,), nodata_fill=0.5))
    assert float(gray[0, 10:].max()) == float(gray[0, 10:].min()) == 0.5

    tf = MultiCropTransform(16, 8, n_local=1, preset="satellite", mean=mean, std=std)
    dataset = ImageDataset(dm.source, tf, bad_file_log=log_file, skip_constant=True)
    for i in range(len(dataset)):
        views, _ = dataset[i]
        assert all(bool(torch.isfinite(v).all()) for v in views["global"] + views["local"])
    assert list(read_bad_file_log(log_file)) == [str(nodata_folder / "mostly.tif")]
    assert read_bad_file_log(log_file)[str(nodata_folder / "mostly.tif")].startswith(
        "[nodata] BadImage: 81% of the 768 values are nodata"
    )
    dm.teardown("fit")
    assert json.loads(log_file.with_suffix(".json").read_text())["counts"] == {"nodata": 1}


def test_fill_reaches_the_checkpoint_and_the_export(nodata_folder: Path, tmp_path) -> None:
    from test_cli import write_recipe

    import acclimate
    from acclimate.cli import main

    recipe = write_recipe(tmp_path, nodata_folder)
    run = tmp_path / "run"
    assert main(["train", str(recipe), f"run_dir={run}", "trainer.max_epochs=1"]) == 0
    assert json.loads((run / "bad_files.json").read_text())["counts"] == {"nodata": 1}
    assert json.loads((run / "metrics.json").read_text())["bad_files"] == 1
    meta = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["acclimate"]
    np.testing.assert_allclose(meta["mean"], _clean_values(nodata_folder).mean(1), rtol=1e-9)
    assert meta["reader"]["nodata_fill"] == meta["mean"]

    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    ex = acclimate.load(export)
    assert ex.options.nodata_fill == tuple(meta["mean"]) and ex.options.nodata is None
    part = read_image(nodata_folder / "part.tif", 3, ex.options)
    torch.testing.assert_close(
        part[:, :4], torch.tensor(meta["mean"]).float()[:, None, None].expand(3, 4, 16)
    )
    expected = EvalTransform(ex.image_size, ex.mean, ex.std)(part)
    torch.testing.assert_close(ex.preprocess(nodata_folder / "part.tif")[0], expected)
    assert bool(torch.isfinite(ex.features(nodata_folder / "part.tif")).all())


def test_nan_inf_and_recipe_nodata_values(tmp_path: Path) -> None:
    x = _values(7, 8).astype(np.float64)  # 3.5e38 is a finite float64
    x[0, :4], x[1, :2], x[1, 2:4], x[2, :2] = np.nan, np.inf, -np.inf, 3.5e38
    path = _tif(tmp_path / "nan.tif", x)
    missing = np.zeros_like(x, bool)
    missing[0, :4] = missing[1, :4] = missing[2, :2] = True
    own_mean = float(x[~missing].astype(np.float32).astype(np.float64).mean())
    image = read_image(path, 1)
    np.testing.assert_allclose(image[0].numpy()[missing], own_mean, rtol=1e-6)
    np.testing.assert_array_equal(image[0].numpy()[~missing], x[~missing].astype(np.float32))
    assert float(read_image(path, 1, ReadOptions(nodata_fill=0.0))[0, 0, 0]) == 0.0
    kept = read_image(path, 1, ReadOptions(keep_missing=True))
    assert int(torch.isnan(kept).sum()) == missing.sum()

    y = _values(8, 8)
    y[:3] = -1.0  # a nodata value the file does not declare
    untagged = _tif(tmp_path / "minus_one.tif", y)
    assert float(read_image(untagged, 1)[0, 0, 0]) == -1.0
    filled = read_image(untagged, 1, ReadOptions(nodata=-1.0))
    np.testing.assert_allclose(filled[0, :3].numpy(), y[3:].astype(np.float64).mean(), rtol=1e-6)

    u16 = np.random.default_rng(0).integers(1, 60000, (8, 8)).astype(np.uint16)
    u16[:, :2] = 0  # 0 = nodata of an integer raster (recipe data.nodata: 0)
    ints = read_image(_tif(tmp_path / "u16.tif", u16), 1, ReadOptions(nodata=0))
    expected = (u16[:, 2:].astype(np.float32) / 65535).astype(np.float64).mean()
    np.testing.assert_allclose(ints[0, :, :2].numpy(), expected, rtol=1e-5)
    gray = np.random.default_rng(1).integers(1, 256, (8, 8)).astype(np.uint8)
    gray[:2] = 0
    Image.fromarray(gray).save(tmp_path / "gray.png")
    png = read_image(tmp_path / "gray.png", 1, ReadOptions(nodata=0, nodata_fill=0.25))
    assert png.dtype == torch.float32 and bool((png[0, :2] == 0.25).all())
    np.testing.assert_allclose(png[0, 2:].numpy(), gray[2:] / 255.0, rtol=1e-6)
    assert read_image(tmp_path / "gray.png", 1).dtype == torch.uint8  # 8-bit fast path kept

    all_nan = _tif(tmp_path / "all_nan.tif", np.full((8, 8), np.nan, np.float32))
    with pytest.raises(BadImage, match="100% of the 192 values are nodata") as e:
        read_image(all_nan, 3)
    assert e.value.reason == "nodata"
    for bad in ({"nodata_fill": float("nan")}, {"max_pixels": 0}):
        with pytest.raises(DataError):
            ReadOptions(**bad)
    back = ReadOptions.from_dict({"nodata": -9999, "nodata_fill": [0.1, 0.2], "max_pixels": 99})
    assert back == ReadOptions(nodata=-9999.0, nodata_fill=(0.1, 0.2), max_pixels=99)
    assert ReadOptions.from_dict(back.to_dict()) == back
    assert ReadOptions.from_dict({"nodata_fill": "mean"}) == ReadOptions()


def test_recipe_keys_validate(tmp_path: Path, tiny_dataset: Path) -> None:
    from test_cli import write_recipe

    from acclimate.config import ConfigError, load_recipe

    path = write_recipe(tmp_path, tiny_dataset)
    data = load_recipe(path).data["data"]
    assert (data["nodata"], data["nodata_fill"], data["max_pixels"]) == (
        None,
        "mean",
        DEFAULT_MAX_PIXELS,
    )
    keys = ["data.nodata=-9999", "data.nodata_fill=0", "data.max_pixels=1000000"]
    data = load_recipe(path, keys).data["data"]
    assert (data["nodata"], data["nodata_fill"], data["max_pixels"]) == (-9999, 0, 1000000)
    with pytest.raises(ConfigError, match="nodata_fill") as e:
        load_recipe(path, ["data.nodata_fill=median"])
    _one_line(e.value)


# ----------------------------------------------------------------------------- features


def _huge(path: Path, seed: int) -> Path:
    """Finite floats so large that normalised inputs overflow: features come out NaN/inf."""
    return _tif(path, (1e38 * (0.5 + _values(seed))).astype(np.float32))


def test_evaluate_and_embed_never_write_nan_rows(tmp_path: Path, caplog, capsys) -> None:
    from conftest import make_class_folders
    from test_embed import _embed

    from acclimate.cli import main

    root = make_class_folders(tmp_path / "images", n_train=5, n_val=4, size=16)
    bad_train = _huge(root / "train" / "class_1" / "huge.tif", 1)
    bad_test = _huge(root / "val" / "class_0" / "huge.tif", 2)
    model = timm.create_model("test_resnet", num_classes=0)
    tf = EvalTransform(32, [0.5] * 3, [0.25] * 3)
    settings = EvalSettings(batch_size=8, num_workers=0)
    sources = labelled_splits(str(root), 3, settings)
    with caplog.at_level(logging.WARNING):
        train, test = split_features(model, sources, tf, settings)
    assert train.left_out == {str(bad_train): "not finite"}
    assert test.left_out == {str(bad_test): "not finite"}
    assert train[0].shape[0] == 15 and test[0].shape[0] == 12
    assert bool(torch.isfinite(train[0]).all() and torch.isfinite(test[0]).all())
    assert "huge.tif ([not finite]" in caplog.text
    rs = ReportSettings(knn_k=3, knn_ks=(3,), probe_weight_decays=(1e-3,), shots=(1,), seeds=(0,))
    metrics = measure_features(train, test, rs, sources[0].classes)
    assert metrics["n_test"] == 12 and metrics["linear_top1"] >= 0.8  # 3 classes: chance 1/3
    assert metrics["left_out"] == {"train": train.left_out, "test": test.left_out}
    before, _ = evaluate_backbone(model, *sources, tf, settings, progress=False)  # training's
    assert before["n_train"] == 15 and before["linear_top1"] >= 0.8

    out = tmp_path / "report"
    args = ["evaluate", "test_resnet", "--data", str(root), "--image-size", "32"]
    args += ["--out", str(out), "--no-plots", "--shots", "1", "--seeds", "1"]
    assert main(args) == 0
    result = json.loads((out / "metrics.json").read_text())["models"]["test_resnet"]
    assert result["left_out"]["test"] == {str(bad_test): "not finite"}
    assert "Left out" in (out / "report.md").read_text()

    weights = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(weights))
    emb = tmp_path / "emb.npy"
    assert _embed(root / "val", emb, str(weights)) == 0
    files = emb.with_suffix(".files.txt").read_text().splitlines()
    feats = np.load(emb)
    assert feats.shape[0] == len(files) == 12 and np.isfinite(feats).all()
    assert str(bad_test) not in files and f"{bad_test} ([not finite]" in caplog.text


# ----------------------------------------------------------------------------- bombs


def test_decompression_bombs_are_skipped_and_listed(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "bombs"
    for k in range(4):
        _png(root / f"good{k}.png", k)
    _png_claiming(root / "pil_bomb.png", 100_000, 100_000)  # PIL's own DecompressionBombError
    _png_claiming(root / "big.png", 9000, 9000)  # 81 M > data.max_pixels, below PIL's limit
    _tif_claiming(root / "big.tif", 60_000, 60_000)  # the tifffile path
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        for name in ("pil_bomb.png", "big.png", "big.tif"):
            for options in (ReadOptions(), ReadOptions(bands=(0,))):
                with pytest.raises(BadImage) as e:
                    read_image(root / name, 1 if options.bands else 3, options)
                assert e.value.reason == "too large" and "pixels" in str(e.value)
    assert "9000 x 9000 = 81,000,000 pixels" in str(
        pytest.raises(BadImage, read_image, root / "big.png").value
    )
    small = ReadOptions(max_pixels=15 * 16)
    with pytest.raises(BadImage, match="more than data.max_pixels = 240"):
        read_image(root / "good0.png", 3, small)
    assert read_image(root / "good0.png", 3, ReadOptions(max_pixels=256)).shape == (3, 16, 16)

    # PIL's own limits: the warning never escapes, the error is a skip
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(root / "good0.png", 3).shape == (3, 16, 16)  # 256 px: PIL warns
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64)
        with pytest.raises(BadImage, match="decompression bomb") as e:
            read_image(root / "good0.png", 3)  # 256 > 2 x 64: PIL refuses
        assert e.value.reason == "too large"
    monkeypatch.undo()

    log_file = tmp_path / "bad_files.txt"
    source = open_source(root)
    assert check_source(source, bad_file_log=log_file) == {"too large": 3}
    dataset = ImageDataset(source, bad_file_log=log_file)
    images = [dataset[i][0] for i in range(len(dataset))]
    assert all(im.shape == (3, 16, 16) for im in images)
    assert bad_file_counts(log_file) == {"too large": 3}


# ----------------------------------------------------------------------------- fuzz


def _broken_files(root: Path, good: bytes, good_tif: bytes, rng: np.random.Generator) -> dict:
    """Broken images beside good ones; returns {name: the reason it must be skipped for}."""
    expect: dict[str, str | None] = {}

    def put(name: str, data: bytes, reason: str | None) -> None:
        (root / name).write_bytes(data)
        expect[name] = reason

    put("zero.png", b"", "unreadable")
    put("text.png", b"just some notes, not an image\n", "unreadable")
    put("truncated.png", good[: len(good) // 2], "truncated")
    put("header_only.png", good[:40], None)
    put("truncated.tif", good_tif[: len(good_tif) // 3], None)
    put("garbage.tif", rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), None)
    _png_claiming(root / "bomb.png", 100_000, 100_000)
    expect["bomb.png"] = "too large"
    _tif_claiming(root / "bomb.tif", 50_000, 50_000)
    expect["bomb.tif"] = "too large"
    _tif(root / "nan.tif", np.full((16, 16), np.nan, np.float32))
    expect["nan.tif"] = "nodata"
    inf = _values(5)
    inf[::2] = np.inf
    inf[1::4] = -np.inf  # 75% missing
    _tif(root / "inf.tif", inf)
    expect["inf.tif"] = "nodata"
    gdal = np.full((16, 16), GDAL_FLOAT_NODATA)
    gdal[0, 0] = 0.5
    _tif(root / "gdal_nodata.tif", gdal, nodata_tag="-3.40282346638529e+38")
    expect["gdal_nodata.tif"] = "nodata"
    _tif(root / "two_bands.tif", np.stack([_values(6), _values(7)]))  # data.channels is 3
    expect["two_bands.tif"] = "band_count"
    for k in range(6):  # random damage: byte flips and cuts anywhere
        data = bytearray(good if k % 2 == 0 else good_tif)
        cut = int(rng.integers(8, len(data)))
        for pos in rng.integers(8, len(data), 4):
            data[pos] ^= int(rng.integers(1, 256))
        put(f"mutant{k}.{'png' if k % 2 == 0 else 'tif'}", bytes(data[:cut]), None)
    return expect


def test_fuzz_broken_images_are_skips_or_one_line_errors(tmp_path: Path, caplog) -> None:
    root = tmp_path / "mixed"
    for k in range(24):
        _png(root / f"good{k:02d}.png", k)
    _tif(root / "part_nodata.tif", np.where(_values(9) > 0.8, np.nan, _values(9)))  # filled
    good = (root / "good00.png").read_bytes()
    good_tif = _tif(tmp_path / "ref.tif", _values(3)).read_bytes()
    expect = _broken_files(root, good, good_tif, np.random.default_rng(0))
    log_file = tmp_path / "run" / "bad_files.txt"

    def guarded(fn, *args, **kwargs):
        """fn's result, or the AcclimateError it raised (one line); anything else fails."""
        try:
            return fn(*args, **kwargs)
        except AcclimateError as exc:
            _one_line(exc)
            return exc

    source = guarded(open_source, root, channels=3)
    assert len(source) == 25 + len(expect)
    counts = guarded(check_source, source, sample=100, skip_constant=True, bad_file_log=log_file)
    assert set(counts) <= set(BAD_REASONS)
    listed = {Path(p).name: r for p, r in read_bad_file_log(log_file).items()}
    for name, reason in expect.items():
        if reason is not None:
            assert listed[name].startswith(f"[{reason}]"), (name, listed.get(name))
    assert not any(n.startswith("good") or n == "part_nodata.tif" for n in listed)

    with caplog.at_level(logging.WARNING):
        stats = guarded(source_stats, source)
    good = [i for i in range(len(source)) if Path(source.describe(i)).name.startswith("good")]
    good_stats = source_stats(source.subset(good))
    assert np.isfinite(stats["mean"]).all() and np.isfinite(stats["std"]).all()
    np.testing.assert_allclose(stats["mean"], good_stats["mean"], atol=0.03)
    np.testing.assert_allclose(stats["std"], good_stats["std"], atol=0.03)
    assert stats["unreadable"] >= sum(r is not None for r in expect.values())

    tf = MultiCropTransform(16, 8, n_local=1, preset="satellite", mean=stats["mean"], std=[0.3] * 3)
    dataset = ImageDataset(source, tf, bad_file_log=log_file, skip_constant=True)
    for i in range(len(dataset)):
        views, _ = guarded(dataset.__getitem__, i)
        assert all(bool(torch.isfinite(v).all()) for v in views["global"] + views["local"])
    listed = {Path(p).name: r for p, r in read_bad_file_log(log_file).items()}
    assert set(bad_file_counts(log_file)) <= set(BAD_REASONS)
    assert sum(bad_file_counts(log_file).values()) == len(listed) >= 10

    loader = eval_loader(source, EvalTransform(16, stats["mean"], [0.3] * 3), 8, num_workers=0)
    kept = []
    for images, _, idx in guarded(iter, loader):
        assert images.shape[1:] == (3, 16, 16) and bool(torch.isfinite(images).all())
        kept += idx.tolist()
    names = {Path(source.describe(i)).name for i in kept}
    assert {f"good{k:02d}.png" for k in range(24)} | {"part_nodata.tif"} <= names
    assert not names & {n for n, r in expect.items() if r is not None}

    all_bad = tmp_path / "all_bad"
    all_bad.mkdir()
    for name in ("zero.png", "text.png", "nan.tif", "bomb.png"):
        shutil.copy(root / name, all_bad / name)
    error = guarded(SSLDataModule, str(all_bad), num_workers=0)
    assert isinstance(error, DataError) and "only 0 of 4 sampled images" in str(error)
    assert isinstance(guarded(source_stats, open_source(all_bad)), DataError)


def test_stats_command_reports_clean_statistics(nodata_folder: Path, tmp_path, capsys) -> None:
    from acclimate.cli import main

    out = tmp_path / "stats.json"
    assert main(["stats", str(nodata_folder), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    expected = _clean_values(nodata_folder).mean(1)
    assert f"mean: {[round(float(m), 4) for m in expected]}" in text
    assert "left out: 1 unreadable image(s), 480 nodata/non-finite value(s) in 2 image(s)" in text
    saved = json.loads(out.read_text())
    np.testing.assert_allclose(saved["mean"], expected, rtol=1e-9)
    assert saved["options"]["max_pixels"] == DEFAULT_MAX_PIXELS
    # an undeclared nodata value, given on the command line
    plain = tmp_path / "plain"
    shutil.copytree(nodata_folder, plain, ignore=shutil.ignore_patterns("*.tif"))
    y = _values(11)
    y[:8] = -9999.0
    _tif(plain / "untagged.tif", y)
    assert main(["stats", str(plain), "--nodata", "-9999", "--split", "all"]) == 0
    clean = np.concatenate([_clean_values(plain), np.repeat(y[8:].reshape(1, -1), 3, 0)], 1)
    assert f"mean: {[round(float(m), 4) for m in clean.mean(1)]}" in capsys.readouterr().out
