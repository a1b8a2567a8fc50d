"""Data sources, readers, ImageDataset and channel statistics on tiny generated data."""

from __future__ import annotations

import csv
import io
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from acclimate.data import (
    DataError,
    ImageDataset,
    channel_stats,
    check_source,
    list_splits,
    open_source,
    read_bad_file_log,
)
from acclimate.data.bad_files import BadFileLog


def _rgb(seed: int, h: int = 8, w: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(_rgb(99, 64, 64)).save(buffer, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _class_tree(root: Path, layout: dict[str, int], seed: int = 0) -> None:
    for k, (name, count) in enumerate(layout.items()):
        for j in range(count):
            _save(root / name / f"img{j}.png", _rgb(seed + 10 * k + j))


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)


# ----------------------------------------------------------------------------- folders


def test_class_folders(tmp_path: Path) -> None:
    _class_tree(tmp_path, {"dog": 2, "cat": 3})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"")
    source = open_source(tmp_path)
    assert source.classes == ["cat", "dog"]
    assert source.labels.tolist() == [0, 0, 0, 1, 1]
    assert source.has_labels and len(source) == 5 and source.channels == 3
    assert source.describe(3).endswith("dog/img0.png")
    assert list_splits(tmp_path) == []
    with pytest.raises(DataError, match="no splits"):
        open_source(tmp_path, split="train")


def test_split_folders_with_valid(tmp_path: Path) -> None:
    _class_tree(tmp_path / "train", {"a": 2, "b": 1})
    _class_tree(tmp_path / "valid", {"a": 1, "c": 2}, seed=50)
    assert list_splits(tmp_path) == ["train", "val"]
    train = open_source(tmp_path, split="train")
    val = open_source(tmp_path, split="val")
    assert train.classes == val.classes == ["a", "b", "c"]
    assert train.labels.tolist() == [0, 0, 1]
    assert val.labels.tolist() == [0, 2, 2]
    assert "split val" in val.name
    assert len(open_source(tmp_path, split="validation")) == 3
    everything = open_source(tmp_path)
    assert len(everything) == 6 and everything.labels.tolist() == [0, 0, 1, 0, 2, 2]
    with pytest.raises(DataError, match="splits present are train, val"):
        open_source(tmp_path, split="test")


def test_unlabelled_train_split_beside_labelled_val(tmp_path: Path) -> None:
    for j in range(2):
        _save(tmp_path / "train" / f"{j}.jpg", _rgb(j))
    _class_tree(tmp_path / "val", {"x": 1})
    assert open_source(tmp_path, split="train").labels.tolist() == [-1, -1]
    val = open_source(tmp_path, split="val")
    assert val.classes == ["x"] and val.labels.tolist() == [0]


def test_class_called_test_is_not_a_split(tmp_path: Path) -> None:
    _class_tree(tmp_path, {"test": 1, "other": 1})
    source = open_source(tmp_path)
    assert source.classes == ["other", "test"] and list_splits(tmp_path) == []


def test_flat_folder(tmp_path: Path) -> None:
    for j in range(3):
        _save(tmp_path / f"x{j}.PNG", _rgb(j))
    (tmp_path / "readme.md").write_text("hi")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    source = open_source(tmp_path)
    assert len(source) == 3 and source.classes == [] and not source.has_labels
    assert source.labels.tolist() == [-1, -1, -1]
    assert source.labels.dtype == np.int64


def test_empty_folder_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images found in .*empty: expected class subfolders"):
        open_source(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- reading pixels


def test_png_pixels_exact_and_conversions(tmp_path: Path) -> None:
    rgb, gray = _rgb(1), _rgb(2)[..., 0]
    _save(tmp_path / "rgb.png", rgb)
    _save(tmp_path / "gray.png", gray)
    as_rgb = open_source(tmp_path, channels=3)
    as_gray = open_source(tmp_path, channels=1)
    assert as_rgb.describe(1).endswith("rgb.png")
    torch.testing.assert_close(as_rgb.load(1), _tensor(rgb), rtol=0, atol=0)
    torch.testing.assert_close(as_rgb.load(0), torch.from_numpy(gray).expand(3, -1, -1))
    assert as_rgb.load(1).dtype == torch.uint8 and as_rgb.load(1).is_contiguous()
    expected_luma = np.array(Image.fromarray(rgb).convert("L"))
    torch.testing.assert_close(as_gray.load(1), torch.from_numpy(expected_luma)[None])
    torch.testing.assert_close(as_gray.load(0), torch.from_numpy(gray)[None])


def test_16bit_png_is_float_in_unit_range(tmp_path: Path) -> None:
    wide = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    image = open_source(tmp_path, channels=1).load(0)
    assert image.dtype == torch.float32
    torch.testing.assert_close(image, torch.from_numpy(wide / 65535).float()[None])


def test_bad_channels(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", _rgb(0))
    with pytest.raises(DataError, match="channels=0"):
        open_source(tmp_path, channels=0)
    with pytest.raises(DataError, match=r"3 band\(s\), expected 4"):
        open_source(tmp_path, channels=4).load(0)


# ----------------------------------------------------------------------------- CSV manifests


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_manifest(tmp_path: Path) -> None:
    for j in range(4):
        _save(tmp_path / "imgs" / f"{j}.png", _rgb(j))
    rows = [
        ["imgs/0.png", 1, "zebra", "train"],
        ["imgs/1.png", 0, "ant", "Valid"],
        [str(tmp_path / "imgs" / "2.png"), 1, "zebra", "train"],
        ["imgs/3.png", "", "", "test"],
    ]
    manifest = _write_csv(tmp_path / "m.csv", ["Path", "label", "class_name", "split"], rows)
    assert list_splits(manifest) == ["train", "val", "test"]
    source = open_source(manifest)
    assert source.classes == ["ant", "zebra"]
    assert source.labels.tolist() == [1, 0, 1, -1]
    torch.testing.assert_close(source.load(1), _tensor(_rgb(1)))
    train = open_source(manifest, split="train")
    assert len(train) == 2 and train.labels.tolist() == [1, 1] and train.classes == source.classes
    assert open_source(manifest, split="validation").labels.tolist() == [0]
    with pytest.raises(DataError, match="splits present are train, val, test"):
        open_source(manifest, split="extra")


def test_csv_class_names_only_and_labels_only(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", _rgb(0))
    names = _write_csv(tmp_path / "names.csv", ["file", "class"], [["a.png", "b"], ["a.png", "a"]])
    source = open_source(names)
    assert source.classes == ["a", "b"] and source.labels.tolist() == [1, 0]
    ids = _write_csv(tmp_path / "ids.csv", ["image", "label"], [["a.png", 2], ["a.png", 0]])
    source = open_source(ids)
    assert source.classes == ["0", "1", "2"] and source.labels.tolist() == [2, 0]


def test_csv_errors(tmp_path: Path) -> None:
    bad = _write_csv(tmp_path / "bad.csv", ["img", "label"], [["a.png", 0]])
    with pytest.raises(DataError, match=r"bad\.csv has no path column.*columns are: img, label"):
        open_source(bad)
    clash = _write_csv(
        tmp_path / "clash.csv", ["path", "label", "class_name"], [["a", 0, "x"], ["b", 0, "y"]]
    )
    with pytest.raises(DataError, match="disagree"):
        open_source(clash)
    words = _write_csv(tmp_path / "words.csv", ["path", "label"], [["a", "cat"]])
    with pytest.raises(DataError, match="row 2: label 'cat' is not an integer"):
        open_source(words)


# ----------------------------------------------------------------------------- .npz arrays


@pytest.fixture
def gray_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in [("train", 5), ("val", 2), ("test", 3)]:
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 6, 7), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, (n, 1))
    arrays["train_labels"][0, 0] = 4  # class ids come from the largest label of any split
    np.savez(tmp_path / "gray.npz", **arrays)
    return tmp_path / "gray.npz"


def test_npz_gray(gray_npz: Path) -> None:
    data = np.load(gray_npz)
    assert list_splits(gray_npz) == ["train", "val", "test"]
    val = open_source(gray_npz, split="val", channels=1)
    assert val.classes == ["0", "1", "2", "3", "4"] and len(val) == 2
    assert val.labels.tolist() == data["val_labels"][:, 0].tolist()
    torch.testing.assert_close(val.load(1), torch.from_numpy(data["val_images"][1])[None])
    assert val.describe(1) == f"{gray_npz}[val_images][1]"
    as_rgb = open_source(gray_npz, split="test")
    torch.testing.assert_close(
        as_rgb.load(2), torch.from_numpy(data["test_images"][2]).expand(3, -1, -1)
    )
    everything = open_source(gray_npz)
    assert len(everything) == 10 and everything.describe(5) == f"{gray_npz}[val_images][0]"
    with pytest.raises(DataError, match="splits present are train, val, test"):
        open_source(gray_npz, split="unlabeled")


def test_npz_rgb_and_classes(tmp_path: Path) -> None:
    images = np.stack([_rgb(j) for j in range(4)])
    path = tmp_path / "rgb.npz"
    np.savez_compressed(
        path, train_images=images, train_labels=np.array([0, 1, 1, 0]), classes=np.array(["x", "y"])
    )
    source = open_source(path, split="train")
    assert source.classes == ["x", "y"] and source.labels.tolist() == [0, 1, 1, 0]
    torch.testing.assert_close(source.load(3), _tensor(images[3]))
    gray = open_source(path, channels=1).load(2)
    expected = np.array(Image.fromarray(images[2]).convert("L"))
    torch.testing.assert_close(gray, torch.from_numpy(expected)[None])  # same luma as PIL


def test_npz_pickles_without_arrays(gray_npz: Path) -> None:
    source = open_source(gray_npz, split="train")
    source.load(0)
    copy = pickle.loads(pickle.dumps(source))
    assert len(pickle.dumps(source)) < 2_000 and copy._arrays == {}
    torch.testing.assert_close(copy.load(4), source.load(4))
    sub = source.subset([4, 0])
    assert sub.labels.tolist() == source.labels[[4, 0]].tolist()
    torch.testing.assert_close(sub.load(0), source.load(4))


# ----------------------------------------------------------------------------- bad files


@pytest.fixture
def with_bad_files(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _save(root / "a" / "0.png", _rgb(0))
    _truncated_jpeg(root / "a" / "1.jpg")
    (root / "a" / "2.jpg").write_text("this is not a jpeg")
    _save(root / "b" / "3.png", _rgb(3))
    return root


def test_dataset_skips_bad_files(with_bad_files: Path, tmp_path: Path, caplog) -> None:
    source = open_source(with_bad_files)
    log_file = tmp_path / "logs" / "bad_files.tsv"
    dataset = ImageDataset(source, transform=lambda x: x.float() / 255, bad_file_log=log_file)
    with caplog.at_level(logging.WARNING):
        image, label = dataset[1]  # 1.jpg and 2.jpg are bad: falls through to b/3.png
    torch.testing.assert_close(image, _tensor(_rgb(3)).float() / 255)
    assert label == 1 and dataset.n_bad == 2
    assert sum("skipping unreadable image" in r.message for r in caplog.records) == 2
    entries = read_bad_file_log(log_file)
    assert sorted(Path(p).name for p in entries) == ["1.jpg", "2.jpg"]
    assert all(reason for reason in entries.values())
    dataset[2]
    assert dataset.n_bad == 2 and len(log_file.read_text().splitlines()) == 2  # once per file
    assert dataset[0][1] == 0 and len(dataset) == 4


def test_bad_file_log_lists_each_file_once(tmp_path: Path) -> None:
    log_file = tmp_path / "run" / "bad_files.txt"
    a, b = BadFileLog(log_file), BadFileLog(log_file)  # two DataLoader workers
    assert a.add("x/1.png", "unreadable", "OSError:\tno\nthing")
    assert not b.add("x/1.png", "truncated", "later")  # appended by the other: seen
    assert b.add("x/2.png", "missing", "gone") and not a.add("x/2.png", "missing", "gone")
    assert log_file.read_text().splitlines() == [
        "x/1.png\t[unreadable] OSError: no thing",
        "x/2.png\t[missing] gone",
    ]


def test_dataset_all_bad_raises(tmp_path: Path) -> None:
    for j in range(3):
        (tmp_path / f"{j}.jpg").write_text("nope")
    with pytest.raises(DataError, match="no readable image in 3 items"):
        ImageDataset(open_source(tmp_path))[0]


def test_check_source(with_bad_files: Path, tmp_path: Path) -> None:
    check_source(open_source(with_bad_files))  # 2 of 4 readable: enough at the default 0.5
    with pytest.raises(DataError, match="only 2 of 4"):
        check_source(open_source(with_bad_files), min_good_fraction=0.9)
    for j in range(3):
        (tmp_path / "bad" / f"{j}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "bad" / f"{j}.jpg").write_text("nope")
    with pytest.raises(DataError, match=r"only 0 of 3 .*bad/0\.jpg \(UnidentifiedImageError"):
        check_source(open_source(tmp_path / "bad"))


def test_dataloader_workers(with_bad_files: Path, tmp_path: Path) -> None:
    source = open_source(with_bad_files)
    pickle.loads(pickle.dumps(source))
    log_file = tmp_path / "bad.tsv"
    dataset = ImageDataset(source, bad_file_log=log_file)
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(2, 3, 8, 10)] * 2
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 1, 1, 1]
    assert sorted(Path(p).name for p in read_bad_file_log(log_file)) == ["1.jpg", "2.jpg"]


# ----------------------------------------------------------------------------- statistics


def test_channel_stats_matches_numpy(tmp_path: Path) -> None:
    arrays = [_rgb(0, 5, 7), _rgb(1, 9, 4), _rgb(2, 3, 3)]
    for j, array in enumerate(arrays):
        _save(tmp_path / f"{j}.png", array)
    (tmp_path / "9.jpg").write_text("unreadable, skipped")
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64) / 255
    mean, std = channel_stats(open_source(tmp_path))
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(std, pixels.std(0), rtol=0, atol=1e-6)
    gray_mean, gray_std = channel_stats(open_source(tmp_path, channels=1))
    assert len(gray_mean) == len(gray_std) == 1
    mean2, _ = channel_stats(open_source(tmp_path), max_images=2, seed=3)
    assert mean2 != mean
