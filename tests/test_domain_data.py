"""Domain data: GeoTIFF / DICOM / NIfTI / 16-bit PNG readers, statistics, bad data, index cache,
N-channel float augmentation and a 13-band run end to end through the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from acclimate.data import DataError, ImageDataset, check_source, index_cache, open_source
from acclimate.data.dataset import bad_file_counts
from acclimate.data.readers import MissingExtra, ReadOptions, read_image
from acclimate.data.stats import source_stats
from acclimate.data.transforms import EvalTransform, MultiCropTransform

tifffile = pytest.importorskip("tifffile")

S2_BANDS = [f"B{i:02d}" for i in range(1, 9)] + ["B8A", "B09", "B10", "B11", "B12"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ACCLIMATE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _gdal_metadata(names: list[str]) -> str:
    items = "".join(
        f'<Item name="DESCRIPTION" sample="{k}" role="description">{n}</Item>'
        for k, n in enumerate(names)
    )
    return f"<GDALMetadata>{items}</GDALMetadata>"


def write_geotiff(path: Path, array: np.ndarray, names: list[str] | None = None) -> Path:
    """(bands, H, W) -> planar TIFF with GDAL band descriptions (as GDAL writes them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extratags = [(42112, "s", 0, _gdal_metadata(names), True)] if names else []
    tifffile.imwrite(
        path, array, photometric="minisblack", planarconfig="separate", extratags=extratags
    )
    return path


def s2_tile(seed: int, size: int = 12, offset: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(offset, offset + 3000, (13, size, size)).astype(np.uint16)


# ----------------------------------------------------------------------------- readers


def test_geotiff_13_bands_values_and_selection(tmp_path: Path) -> None:
    array = s2_tile(0)
    path = write_geotiff(tmp_path / "tile.tif", array, S2_BANDS)
    image = read_image(path, 13)
    assert image.dtype == torch.float32 and image.shape == (13, 12, 12)
    torch.testing.assert_close(image, torch.from_numpy(array / 65535).float())
    by_name = read_image(path, 3, ReadOptions(bands=("B04", "B03", "B02")))
    by_index = read_image(path, 3, ReadOptions(bands=(3, 2, 1)))
    torch.testing.assert_close(by_name, by_index)
    torch.testing.assert_close(by_name, torch.from_numpy(array[[3, 2, 1]] / 65535).float())
    # interleaved (H, W, bands) storage reads the same
    tifffile.imwrite(tmp_path / "contig.tif", array.transpose(1, 2, 0), planarconfig="contig")
    torch.testing.assert_close(read_image(tmp_path / "contig.tif", 13), image)
    with pytest.raises(DataError, match="13 band"):
        read_image(path, 4)
    with pytest.raises(DataError, match="no band named 'B99'"):
        read_image(path, 1, ReadOptions(bands=("B99",)))


def test_missing_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, *args: object) -> object:
        if name in ("tifffile", "pydicom"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    path = write_geotiff(tmp_path / "data" / "t.tif", s2_tile(1))
    with pytest.raises(MissingExtra, match=r"pip install 'acclimate\[geo\]'"):
        read_image(path, 13)
    with pytest.raises(MissingExtra, match=r"acclimate\[geo\]"):  # before training, not skipped
        check_source(open_source(tmp_path / "data", channels=13))
    with pytest.raises(MissingExtra, match=r"acclimate\[medical\]"):
        read_image(tmp_path / "x.dcm", 1)


def test_missing_extra_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import importlib

    from acclimate.cli import main

    real = importlib.import_module

    def fake(name: str, *args: object) -> object:
        if name == "tifffile":
            raise ImportError(name)
        return real(name, *args)

    write_geotiff(tmp_path / "tiles" / "t.tif", s2_tile(1))
    monkeypatch.setattr(importlib, "import_module", fake)
    assert main(["stats", str(tmp_path / "tiles"), "--channels", "13"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert err.startswith("acclimate stats: error:") and "pip install 'acclimate[geo]'" in err


def test_16bit_png(tmp_path: Path) -> None:
    wide = np.array([[0, 1000, 65535], [4095, 30000, 12]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png", 1)
    torch.testing.assert_close(image, torch.from_numpy(wide / 65535).float()[None])
    windowed = read_image(tmp_path / "x.png", 1, ReadOptions(window=(2048.0, 4096.0)))
    assert windowed[0, 0, 0] == 0 and windowed[0, 0, 2] == 1
    assert windowed[0, 0, 1] == pytest.approx((1000 - 2047.5) / 4095 + 0.5, abs=1e-6)


def write_dicom(
    path: Path,
    stored: np.ndarray,
    slope: float = 1.0,
    intercept: float = -1024.0,
    window: tuple[float, float] | None = (40.0, 400.0),
    photometric: str = "MONOCHROME2",
) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _window(x: np.ndarray, c: float, w: float) -> np.ndarray:  # DICOM PS3.3 C.11.2.1.2
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)


def test_dicom_rescale_window_and_monochrome1(tmp_path: Path) -> None:
    stored = np.array([[0, 1000, 1064], [1100, 1500, 4095]], dtype=np.uint16)
    hu = stored * 2.0 - 1024  # slope 2, intercept -1024
    path = write_dicom(tmp_path / "ct.dcm", stored, slope=2.0)
    image = read_image(path, 1)  # the file's window: 40 / 400
    assert image.dtype == torch.float32 and image.shape == (1, 2, 3)
    np.testing.assert_allclose(image[0].numpy(), _window(hu, 40, 400), atol=1e-6)
    lung = read_image(path, 1, ReadOptions(window=(-600.0, 1500.0)))  # the recipe's window
    np.testing.assert_allclose(lung[0].numpy(), _window(hu, -600, 1500), atol=1e-6)
    as_rgb = read_image(path, 3)
    assert as_rgb.shape == (3, 2, 3) and torch.equal(as_rgb[0], as_rgb[2])
    # no window in the file: the full 12-bit stored range, in HU
    plain = read_image(write_dicom(tmp_path / "nw.dcm", stored, slope=2.0, window=None), 1)
    np.testing.assert_allclose(plain[0].numpy(), _window(hu, 3071.5, 8191), atol=1e-6)
    inverted = read_image(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"), 1)
    np.testing.assert_allclose(
        inverted[0].numpy(), 1 - _window(stored - 1024.0, 40, 400), atol=1e-6
    )


def test_nifti_volume_sliced(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    volume = np.random.default_rng(0).normal(100, 30, (6, 7, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "vol.nii.gz")
    source = open_source(tmp_path, channels=1, options=ReadOptions(slice_axis=2))
    assert len(source) == 5 and source.describe(3).endswith("vol.nii.gz[slice 3]")
    torch.testing.assert_close(source.load(3), torch.from_numpy(volume[:, :, 3])[None])
    coronal = open_source(tmp_path, channels=1, options=ReadOptions(slice_axis=1))
    assert len(coronal) == 7
    torch.testing.assert_close(coronal.load(2), torch.from_numpy(volume[:, 2, :])[None])
    windowed = open_source(tmp_path, channels=1, options=ReadOptions(window=(100.0, 60.0)))
    np.testing.assert_allclose(windowed.load(0)[0], _window(volume[:, :, 0], 100, 60), atol=1e-6)


# ----------------------------------------------------------------------------- statistics


def test_stats_match_numpy_on_13_bands(tmp_path: Path) -> None:
    tiles = [s2_tile(k, size=6 + k, offset=500 * k) for k in range(3)]
    for k, tile in enumerate(tiles):
        write_geotiff(tmp_path / f"{k}.tif", tile)
    (tmp_path / "broken.tif").write_bytes(b"II*\0garbage")
    stats = source_stats(open_source(tmp_path, channels=13))
    # the same pixels as the reader gives them: uint16 / 65535 in float32
    pixels = np.concatenate([t.reshape(13, -1) for t in tiles], axis=1)
    pixels = (pixels.astype(np.float32) / np.float32(65535)).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], pixels.mean(1), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], pixels.std(1), rtol=1e-9)
    for p in (1, 50, 99):
        np.testing.assert_allclose(
            stats["percentiles"][str(p)], np.percentile(pixels, p, axis=1), rtol=1e-5
        )
    np.testing.assert_allclose(stats["max"], pixels.max(1), rtol=1e-6)
    assert stats["sampled"] == 3 and stats["unreadable"] == 1


def test_clip_statistics_are_of_clipped_values(tmp_path: Path) -> None:
    tiles = [s2_tile(k, size=8, offset=400 * k) for k in range(3)]
    for k, tile in enumerate(tiles):
        write_geotiff(tmp_path / f"{k}.tif", tile)
    stats = source_stats(open_source(tmp_path, channels=13), clip=[2, 98])
    pixels = np.concatenate([t.reshape(13, -1) for t in tiles], axis=1)
    pixels = (pixels.astype(np.float32) / np.float32(65535)).astype(np.float64)
    low, high = np.percentile(pixels, 2, axis=1), np.percentile(pixels, 98, axis=1)
    clipped = np.clip(pixels, low[:, None], high[:, None])
    c = stats["clip"]
    assert c["percentiles"] == [2.0, 98.0]
    np.testing.assert_allclose(c["low"], low, rtol=1e-5)
    np.testing.assert_allclose(c["high"], high, rtol=1e-5)
    np.testing.assert_allclose(c["mean"], clipped.mean(1), rtol=1e-5)
    np.testing.assert_allclose(c["std"], clipped.std(1), rtol=1e-5)
    np.testing.assert_allclose(stats["mean"], pixels.mean(1), rtol=1e-9)  # unclipped as before
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        source_stats(open_source(tmp_path, channels=13), clip=[99, 1])


# ----------------------------------------------------------------------------- bad data


def test_bad_data_counted_per_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "tiles"
    for k in range(6):
        write_geotiff(root / f"good{k}.tif", s2_tile(k))
    good = (root / "good0.tif").read_bytes()
    (root / "truncated.tif").write_bytes(good[: len(good) // 2])
    (root / "garbage.tif").write_bytes(b"definitely not a tiff")
    write_geotiff(root / "four_bands.tif", s2_tile(9)[:4])
    tifffile.imwrite(
        root / "complex.tif", np.ones((13, 4, 4), np.complex64), planarconfig="separate"
    )
    write_geotiff(root / "blank.tif", np.full((13, 12, 12), 7, np.uint16))
    source = open_source(root, channels=13)
    log_file = tmp_path / "run" / "bad_files.txt"
    counts = check_source(source, skip_constant=True, bad_file_log=log_file)
    assert counts == {"band_count": 1, "dtype": 1, "constant": 1, "truncated": 1, "unreadable": 1}
    assert bad_file_counts(log_file) == counts
    dataset = ImageDataset(source, bad_file_log=log_file, skip_constant=True)
    with caplog.at_level(logging.WARNING):
        images = [dataset[i][0] for i in range(len(dataset))]
    assert (
        all(im.shape == (13, 12, 12) for im in images)
        and len(log_file.read_text().splitlines()) == 5
    )
    with pytest.raises(DataError, match=r"only 6 of 11 .*band_count 1.*e\.g\. .*\.tif \("):
        check_source(source, min_good_fraction=0.7, skip_constant=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found"):
        open_source(empty, channels=13)


# ----------------------------------------------------------------------------- scale


def test_index_cache_reused_and_invalidated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_cache: Path
) -> None:
    monkeypatch.setattr(index_cache, "MIN_ITEMS", 0)
    root = tmp_path / "flat"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for j in range(3):
            (root / cls / f"{j}.png").write_bytes(b"")
    first = open_source(root)
    assert len(list((private_cache / "index").glob("*.npz"))) == 1
    from acclimate.data.sources import folder

    def no_scan(*args: object) -> None:
        raise AssertionError("rescanned although nothing changed")

    with monkeypatch.context() as m:
        m.setattr(folder, "_scan_folder_index", no_scan)
        again = open_source(root)
    assert [again.describe(i) for i in range(6)] == [first.describe(i) for i in range(6)]
    assert again.labels.tolist() == first.labels.tolist() and again.classes == ["a", "b"]
    (root / "b" / "new.png").write_bytes(b"")
    assert len(open_source(root)) == 7  # the folder's mtime changed: rebuilt


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("preset", ["satellite", "medical", "microscopy", "natural"])
def test_presets_on_13_band_float(preset: str) -> None:
    torch.manual_seed(0)
    mean, std = [0.05] * 13, [0.02] * 13
    t = MultiCropTransform(16, 8, 2, preset=preset, channels=13, mean=mean, std=std)
    x = torch.rand(13, 20, 20) * 0.1
    views = t(x)
    assert [v.shape for v in views["global"]] == [(13, 16, 16)] * 2
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views["local"])
    out = EvalTransform(16, mean, std)(x)
    assert out.shape == (13, 16, 16)
    assert out.mean().abs() < 3  # normalised with the data's statistics, not 255-scaled


def test_satellite_crops_keep_the_aspect_ratio() -> None:
    from torchvision.transforms import v2

    from acclimate.data.transforms import SATELLITE_GLOBAL_SCALE, SATELLITE_LOCAL_SCALE

    torch.manual_seed(0)
    t = MultiCropTransform(
        16, 8, 2, preset="satellite", channels=13, mean=[0.0] * 13, std=[1.0] * 13
    )
    crops = [
        (op, view)
        for view, pipe in (("global", t.global1), ("global", t.global2), ("local", t.local))
        for op in pipe.transforms
        if isinstance(op, v2.RandomResizedCrop)
    ]
    assert len(crops) == 3
    for op, view in crops:
        assert op.ratio == (1.0, 1.0)
        assert op.scale == (SATELLITE_GLOBAL_SCALE if view == "global" else SATELLITE_LOCAL_SCALE)
        for shape in ((13, 40, 24), (13, 24, 40), (13, 33, 33), (13, 20, 200)):
            for _ in range(200):  # square crops of the tile, whatever its shape
                params = op.make_params([torch.empty(shape)])
                assert params["height"] == params["width"], (shape, params)
    natural = MultiCropTransform(16, 8, 1, channels=3)
    assert natural.global1.transforms[0].ratio == pytest.approx((3 / 4, 4 / 3))
    assert natural.global1.transforms[0].scale == (0.4, 1.0)
    given = MultiCropTransform(16, 8, 1, (0.5, 1.0), preset="satellite", channels=3)
    assert given.global1.transforms[0].scale == (0.5, 1.0)  # a recipe's scale wins


def test_window_jitter_on_physical_units() -> None:
    from acclimate.data.transforms import WindowJitter

    torch.manual_seed(0)
    hu = torch.linspace(-1000, 2000, 400).reshape(1, 20, 20)  # NIfTI CT slice, no data.window
    jitter = WindowJitter(0.1, 1.25)
    for _ in range(20):
        out = jitter(hu)
        assert out.min() >= -1000 - 1e-3 and out.max() <= 2000 + 1e-3  # same units, not [0, 1]
        assert out.unique().numel() > 200  # not collapsed to two values
    torch.testing.assert_close(WindowJitter(0.0, 1.0)(hu)[0, 5], hu[0, 5])  # identity window
    unit = torch.rand(1, 20, 20)
    assert WindowJitter(0.1, 1.25)(unit).max() <= 1  # [0, 1] images as before
    views = MultiCropTransform(16, 8, 2, preset="medical", channels=1, mean=[500.0], std=[800.0])(
        hu
    )
    assert all(v.std() > 0.1 for v in views["global"] + views["local"])


def test_stain_jitter_rgb_microscopy() -> None:
    t = MultiCropTransform(16, 8, 1, preset="microscopy", channels=3)
    x = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    assert t(x)["global"][0].shape == (3, 16, 16)


# ----------------------------------------------------------------------------- end to end


def test_13_band_geotiff_trains_and_exports(tmp_path: Path, capsys) -> None:
    import timm
    from test_cli import write_recipe

    import acclimate
    from acclimate.cli import main

    data = tmp_path / "s2"
    for split, n in (("train", 6), ("val", 3)):
        for c in range(2):
            for j in range(n):
                write_geotiff(
                    data / split / f"class_{c}" / f"{j}.tif",
                    s2_tile(100 * c + j + 10 * n, size=20, offset=4000 * c),
                    S2_BANDS,
                )
    stats_file = tmp_path / "s2_stats.json"
    assert main(["stats", str(data), "--channels", "13", "--out", str(stats_file)]) == 0
    assert "data.stats=" in capsys.readouterr().out
    recipe = write_recipe(tmp_path, data, "test_resnet", channels=13)  # RGB weights file
    run = tmp_path / "run"
    args = ["train", str(recipe), f"run_dir={run}", "trainer.max_epochs=1"]
    args += [f"data.stats={stats_file}", "augment.preset=satellite", "data.batch_size=4"]
    assert main(args) == 0
    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    meta = json.loads((export / "acclimate.json").read_text())
    assert meta["channels"] == 13 and meta["bands"] == S2_BANDS
    saved = json.loads(stats_file.read_text())
    assert meta["mean"] == pytest.approx(saved["mean"])
    assert meta["statistics"]["percentiles"]["99"] == pytest.approx(saved["percentiles"]["99"])
    model = timm.create_model(f"local-dir:{export}", pretrained=True, num_classes=0).eval()
    assert model(torch.randn(1, 13, 20, 20)).shape[0] == 1  # the stem takes 13 bands
    ex = acclimate.load(export)
    feats = ex.features([data / "val" / "class_0" / "0.tif"])
    assert feats.shape[0] == 1 and torch.isfinite(feats).all()


MAE_RECIPE = """
name: tiny-mae-13
backbone:
  name: test_vit
  weights: {weights}
  in_chans: 13
data:
  train: {data}
  channels: 13
  image_size: 32
  batch_size: 4
  num_workers: 0
  clip: [1, 99]
augment:
  n_local: 0
  preset: satellite
  color_strength: 0.0
  blur_p: 0.0
method:
  name: mae
  mask_ratio: 0.75
  decoder_dim: 32
  decoder_depth: 1
  decoder_heads: 4
optim:
  freeze_backbone_epochs: 0
  warmup_epochs: 0
eval:
  every_n_epochs: 0
  before_after: false
  pictures: false
  batch_size: 16
  num_workers: 0
trainer:
  max_epochs: 1
  max_steps: 2
  progress_bar: false
  log_every_n_steps: 1
"""


def test_13_band_mae_with_clip_trains_and_exports(tmp_path: Path) -> None:
    """MAE on 13-band uint16 GeoTIFFs from 3-channel ViT weights (in_chans adapted), with
    ``data.clip``: the bounds and clipped statistics reach the export, and ``acclimate.load``
    clips exactly as training does."""
    import timm
    from safetensors.torch import save_file

    import acclimate
    from acclimate.cli import main
    from acclimate.data.datamodule import SSLDataModule

    data = tmp_path / "s2"
    for j in range(8):
        write_geotiff(data / f"{j}.tif", s2_tile(j, size=20, offset=100 * j), S2_BANDS)
    rgb = timm.create_model("test_vit", num_classes=0, in_chans=3)
    weights = tmp_path / "vit_rgb.safetensors"
    save_file(rgb.state_dict(), str(weights))
    recipe = tmp_path / "mae13.yaml"
    recipe.write_text(MAE_RECIPE.format(weights=weights, data=data))
    run = tmp_path / "run"
    assert main(["train", str(recipe), f"run_dir={run}"]) == 0
    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0

    meta = json.loads((export / "acclimate.json").read_text())
    assert meta["channels"] == 13 and meta["bands"] == S2_BANDS
    stock = timm.create_model(f"local-dir:{export}", pretrained=True, num_classes=0).eval()
    assert stock.patch_embed.proj.weight.shape[1] == 13  # adapted from the RGB stem
    # the bounds are the training data's 1st/99th percentiles; mean/std those of clipped values
    tiles = [s2_tile(j, size=20, offset=100 * j).reshape(13, -1) for j in range(8)]
    pixels = np.concatenate(tiles, axis=1)
    pixels = (pixels.astype(np.float32) / np.float32(65535)).astype(np.float64)
    low, high = np.percentile(pixels, 1, axis=1), np.percentile(pixels, 99, axis=1)
    assert meta["clip"]["percentiles"] == [1.0, 99.0]
    np.testing.assert_allclose(meta["clip"]["low"], low, rtol=1e-5)
    np.testing.assert_allclose(meta["clip"]["high"], high, rtol=1e-5)
    clipped = np.clip(pixels, low[:, None], high[:, None])
    np.testing.assert_allclose(meta["mean"], clipped.mean(1), rtol=1e-5)
    np.testing.assert_allclose(meta["std"], clipped.std(1), rtol=1e-5)

    # an image far outside the percentiles, and the same image clipped beforehand
    extreme = s2_tile(99, size=20)
    extreme[:, :, :10] = 0
    extreme[:, :, 10:] = 65535
    raw = write_geotiff(tmp_path / "extreme.tif", extreme, S2_BANDS)
    mean_t = torch.tensor(meta["mean"])[:, None, None]
    std_t = torch.tensor(meta["std"])[:, None, None]
    low_t = torch.tensor(meta["clip"]["low"], dtype=torch.float32)[:, None, None]
    high_t = torch.tensor(meta["clip"]["high"], dtype=torch.float32)[:, None, None]
    x = read_image(raw, 13)
    x_clipped = torch.maximum(torch.minimum(x, high_t), low_t)
    ex = acclimate.load(export)
    out = ex.preprocess(raw)
    torch.testing.assert_close(out, ex.preprocess(x_clipped))
    unnorm = out[0] * std_t + mean_t
    assert (unnorm >= low_t - 1e-5).all() and (unnorm <= high_t + 1e-5).all()
    assert torch.isclose(unnorm, high_t, atol=1e-5).any()  # values beyond p99 hit the bound

    # training: the data module resolves the same bounds and its views clip the same way
    dm = SSLDataModule(str(data), channels=13, clip=[1, 99], image_size=32, num_workers=0)
    bounds = dm.clip_range()
    assert bounds is not None
    np.testing.assert_allclose(bounds[0], meta["clip"]["low"], rtol=1e-6)
    np.testing.assert_allclose(bounds[1], meta["clip"]["high"], rtol=1e-6)
    np.testing.assert_allclose(dm.normalization()[0], meta["mean"], rtol=1e-6)
    eval_tf = EvalTransform(32, meta["mean"], meta["std"], bounds)  # training's eval transform
    torch.testing.assert_close(eval_tf(x), out[0])
    train_tf = MultiCropTransform(
        32,
        n_local=0,
        preset="satellite",
        color_strength=0.0,
        blur_p=0.0,
        channels=13,
        mean=meta["mean"],
        std=meta["std"],
        clip=bounds,
    )
    for seed in range(5):
        torch.manual_seed(seed)
        views = train_tf(x)["global"]
        torch.manual_seed(seed)
        torch.testing.assert_close(views, train_tf(x_clipped)["global"])
        for v in views:
            v = v * std_t + mean_t
            assert (v >= low_t - 1e-5).all() and (v <= high_t + 1e-5).all()
