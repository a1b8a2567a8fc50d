"""Reader settings (window, bands, slice axis) reach every consumer: training, evaluation,
checkpoints, exports; unreadable files are dropped, not replaced, outside training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import acclimate
from acclimate.data import ImageDataset, open_source
from acclimate.data.datamodule import SSLDataModule, eval_loader
from acclimate.data.readers import ReadOptions, read_image
from acclimate.data.transforms import EvalTransform
from acclimate.eval.features import extract_features, extract_features_indexed
from acclimate.eval.protocol import EvalSettings, evaluate_backbone, labelled_splits
from acclimate.export.load import resolve_model

WINDOW = [2000.0, 3000.0]


def make_16bit_classes(root: Path, n: int = 8, size: int = 24) -> Path:
    """``root/class_k/*.png``: 16-bit grayscale, no split folders."""
    rng = np.random.default_rng(0)
    for k in range(2):
        d = root / f"class_{k}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.normal(1500 + 1000 * k, 400, size=(size, size)).clip(0, 65535)
            Image.fromarray(img.astype(np.uint16)).save(d / f"{i}.png")
    return root


def test_window_reaches_training_checkpoint_export_and_eval(tmp_path, capsys, caplog):
    from test_cli import write_recipe

    from acclimate.cli import main

    data = make_16bit_classes(tmp_path / "xray")
    recipe = write_recipe(tmp_path, data, "test_resnet", channels=1)
    run = tmp_path / "run"
    args = ["train", str(recipe), f"run_dir={run}", "trainer.max_epochs=1"]
    args += [f"data.window=[{WINDOW[0]},{WINDOW[1]}]", "augment.preset=medical"]
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    # no split folders: the "held-out" images were trained on (without labels), said and recorded
    assert "self-supervised training saw them" in caplog.text
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_images_seen_in_pretraining"] is True

    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["acclimate"]["reader"]["window"] == WINDOW
    assert resolve_model(str(run)).options.window == tuple(WINDOW)

    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    ex = acclimate.load(export)
    # missing values are filled with the training mean (acclimate.data.readers, "Missing values")
    assert ex.options == ReadOptions(window=(WINDOW[0], WINDOW[1]), nodata_fill=tuple(ex.mean))
    assert resolve_model(str(export)).options == ex.options

    # the pixels training read == what the export and the evaluation read
    dm = SSLDataModule(str(data), channels=1, window=WINDOW, image_size=32, num_workers=0)
    path = dm.source.paths[0]
    trained = EvalTransform(ex.image_size, ex.mean, ex.std)(dm.source.load(0))
    torch.testing.assert_close(ex.preprocess(path)[0], trained)
    plain = EvalTransform(ex.image_size, ex.mean, ex.std)(read_image(path, 1))
    assert not torch.allclose(plain, trained)  # the window matters for this data
    train_src, test_src = labelled_splits(str(data), 1, EvalSettings(), ex.options)
    for src in (train_src, test_src):
        torch.testing.assert_close(src.load(0), read_image(src.paths[0], 1, ex.options))

    # probe on the export reads with the export's options too
    assert main(["probe", str(export), "--data", str(data), "--name", "xray"]) == 0


def test_eval_drops_unreadable_images(tmp_path, tiny_dataset, caplog):
    (tiny_dataset / "val" / "class_0" / "broken.png").write_bytes(b"not a png")
    train_src, test_src = labelled_splits(str(tiny_dataset), 3, EvalSettings(num_workers=0))
    assert len(test_src) == 19
    broken = [i for i in range(len(test_src)) if "broken" in test_src.describe(i)][0]

    dataset = ImageDataset(test_src, EvalTransform(32, [0.5] * 3, [0.25] * 3), on_bad="drop")
    assert dataset[broken] is None
    assert dataset[broken + 1][2] == broken + 1  # items carry their source index

    model = timm.create_model("test_resnet", num_classes=0)
    tf = EvalTransform(32, [0.5] * 3, [0.25] * 3)
    loader = eval_loader(test_src, tf, batch_size=4, num_workers=0)
    with caplog.at_level(logging.WARNING):
        feats, labels, kept = extract_features_indexed(model, loader)
    assert "left out 1 unreadable image(s) of 19" in caplog.text
    assert len(feats) == len(labels) == len(kept) == 18 and broken not in kept.tolist()
    torch.testing.assert_close(labels, torch.as_tensor(test_src.labels[kept.numpy()]).long())
    assert extract_features(model, loader)[0].shape[0] == 18  # the 2-tuple form still works

    settings = EvalSettings(batch_size=4, num_workers=0)
    metrics, _ = evaluate_backbone(model, train_src, test_src, tf, settings, progress=False)
    assert metrics["n_test"] == 18 and metrics["n_train"] == 36


def test_all_bad_batch_is_skipped(tmp_path, tiny_dataset):
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(3):
        (folder / f"bad{i}.png").write_bytes(b"junk")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + 100).save(folder / "z_good.png")
    src = open_source(folder, None, channels=3)
    loader = eval_loader(src, EvalTransform(8, [0.5] * 3, [0.25] * 3), batch_size=3, num_workers=0)
    batches = list(loader)
    assert len(batches) == 1 and batches[0][2].tolist() == [3]


@pytest.mark.parametrize("window", [None, (40.0, 400.0)])
def test_dicom_reader_options_round_trip(window):
    options = ReadOptions(bands=None, window=window, slice_axis=1)
    again = ReadOptions.from_dict(json.loads(json.dumps(options.to_dict())))
    assert again == options
    assert ReadOptions.from_dict({"window": None, "slice_axis": None}) == ReadOptions()
