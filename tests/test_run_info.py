"""Run info: the typed record of a run in every checkpoint (``acclimate.run_info``), read by
export, MODEL resolution and resume; older checkpoints (the whole recipe) still export alike."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import make_class_folders
from test_cli import write_recipe

from acclimate.adapters import AdapterSettings
from acclimate.backbones import create_backbone
from acclimate.cli import main
from acclimate.data.readers import ReadOptions
from acclimate.export.load import resolve_model
from acclimate.preflight import CheckpointError
from acclimate.run_info import (
    INFO_KEY,
    RECIPE_KEY,
    VERSION,
    BackboneRef,
    Clip,
    RunInfo,
    read_run_info,
)

INFO = RunInfo(
    backbone=BackboneRef("test_vit", "/data/start.safetensors", 4, 0.1, "student"),
    method="dino",
    image_size=48,
    channels=4,
    mean=(0.1, 0.2, 0.3, 0.4),
    std=(0.5, 0.6, 0.7, 0.8),
    adapter=AdapterSettings(lora_rank=4, target_modules=("attn.qkv",), save_base=False),
    features="last2",
    bands=("B02", "B03", "B04", "B08"),
    reader=ReadOptions(bands=(1, 2, 3, 7), window=(40, 400), nodata=0, nodata_fill=(0.1,) * 4),
    statistics={"channels": 4, "mean": [0.1, 0.2, 0.3, 0.4]},
    clip=Clip((1.0, 99.0), (0.0, 0.0, 0.1, 0.1), (0.9, 1.0, 1.0, 1.0)),
)


def test_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    entry = INFO.to_dict()
    assert entry["version"] == VERSION
    assert json.loads(json.dumps(entry)) == entry  # plain JSON types
    torch.save({"state_dict": {}, INFO_KEY: entry}, path)
    assert read_run_info(path) == INFO  # weights_only load, every field back
    assert RunInfo.from_dict(entry) == INFO
    plain = RunInfo(BackboneRef("test_resnet"), "mae", 32, 3, (0.5,) * 3, (0.25,) * 3)
    assert RunInfo.from_dict(plain.to_dict()) == plain


def test_backbone_ref_is_create_backbone_signature() -> None:
    """The recipe's backbone: section is create_backbone's parameters; BackboneRef holds them."""
    params = inspect.signature(create_backbone).parameters
    assert [f.name for f in fields(BackboneRef)] == list(params)
    assert all(f.default == params[f.name].default for f in fields(BackboneRef)[1:])


def _altered(**changes):
    entry = INFO.to_dict()
    for key, value in changes.items():
        if value is _DROP:
            entry.pop(key)
        else:
            entry[key] = value
    return entry


_DROP = object()
MALFORMED = {
    "mean": (_altered(mean="0.5"), "mean: expected a list of numbers"),
    "channels": (_altered(mean=[0.5] * 3, std=[0.2] * 3), "mean and std must have one value"),
    "backbone": (_altered(backbone=_DROP), "backbone: needs a name"),
    "backbone_key": (_altered(backbone={"name": "x", "in_chans": 3, "typo": 1}), "typo"),
    "features": (_altered(features="patches"), "features: feature kind 'patches'"),
    "adapter": (_altered(adapter={"lora_rank": -1}), "lora_rank must be >= 0"),
    "reader": (_altered(reader={"window": [1, 0]}), "window must be [centre, width]"),
    "clip": (_altered(clip={"low": [0.0], "high": [1.0]}), "clip: expected {low"),
    "version": (_altered(version="1"), "version: expected an integer"),
    "list": ([1, 2], "expected a mapping, got list"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_entry_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    entry, message = MALFORMED[case]
    path = tmp_path / "altered.ckpt"
    torch.save({"state_dict": {}, INFO_KEY: entry}, path)
    with pytest.raises(CheckpointError) as e:
        read_run_info(path)
    line = str(e.value)
    assert line.startswith(f"{path}: acclimate run info: ") and message in line, line
    assert "\n" not in line


def test_a_newer_entry_says_to_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "future.ckpt"
    torch.save({"state_dict": {}, INFO_KEY: _altered(version=VERSION + 1)}, path)
    with pytest.raises(CheckpointError, match="newer acclimate") as e:
        read_run_info(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


# acclimate.json of an export before run info (values that depend on the run aside)
EXPORT_KEYS = {
    "format_version", "architecture", "num_features", "channels", "image_size", "mean", "std",
    "preprocessing", "clip", "feature_kinds", "features", "feature_dim", "class_token",
    "source", "metrics", "bands", "reader", "statistics", "value_range", "start_blend",
}  # fmt: skip


def _legacy(ckpt: dict) -> dict:
    """A checkpoint as acclimate wrote it before run info: the recipe inside the metadata."""
    info, recipe = ckpt.pop(INFO_KEY), ckpt.pop(RECIPE_KEY)
    keys = ("mean", "std", "image_size", "channels", "bands", "reader", "statistics", "clip")
    ckpt[INFO_KEY] = {"recipe": recipe, **{k: info[k] for k in keys}}
    return ckpt


def test_export_is_as_before_and_old_checkpoints_still_export(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "images")
    recipe = write_recipe(tmp_path, data, "test_resnet")
    run = tmp_path / "run"
    args = ["train", str(recipe), f"run_dir={run}", "trainer.max_epochs=1", "data.clip=[1,99]"]
    assert main([*args, "eval.before_after=false", "eval.every_n_epochs=0"]) == 0
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    info = read_run_info(last)
    assert ckpt[INFO_KEY] == info.to_dict() and ckpt[RECIPE_KEY]["name"] == "tiny"
    assert resolve_model(str(run)).run_info == info
    assert main(["export", str(run), "--out", str(tmp_path / "new")]) == 0
    meta = json.loads((tmp_path / "new" / "acclimate.json").read_text())
    assert set(meta) == EXPORT_KEYS and meta["start_blend"] == 1.0
    # the reader as the export wrote it from the recipe's data: keys before run info
    data_keys = ckpt[RECIPE_KEY]["data"]
    old_reader = {k: data_keys[k] for k in ReadOptions().to_dict()}
    old_reader["nodata_fill"] = data_keys["mean"]  # "mean": training filled with the means
    assert meta["reader"] == old_reader
    assert meta["mean"] == list(info.mean) and meta["image_size"] == info.image_size
    assert meta["clip"] == info.clip.to_dict() and meta["features"] == "pooled"
    assert meta["statistics"] == info.statistics and meta["bands"] is None

    old = tmp_path / "old.ckpt"  # the same checkpoint in the previous format
    torch.save(_legacy(ckpt), old)
    assert read_run_info(old) == info
    assert main(["export", str(old), "--out", str(tmp_path / "old")]) == 0
    old_meta = json.loads((tmp_path / "old" / "acclimate.json").read_text())
    old_meta.pop("source"), meta.pop("source")
    assert old_meta == meta
    assert (tmp_path / "old" / "recipe.yaml").read_text() == (
        tmp_path / "new" / "recipe.yaml"
    ).read_text()


def test_resume_refuses_an_altered_run_info_in_one_line(tmp_path: Path, capsys) -> None:
    data = make_class_folders(tmp_path / "images", n_train=4, n_val=2)
    recipe = write_recipe(tmp_path, data, "test_resnet")
    run = tmp_path / "run"
    args = ["train", str(recipe), f"run_dir={run}", "trainer.max_epochs=1"]
    assert main([*args, "eval.before_after=false", "eval.every_n_epochs=0"]) == 0
    for path in (run / "checkpoints").glob("*.ckpt"):
        ckpt = torch.load(path, weights_only=True)
        ckpt[INFO_KEY]["image_size"] = "32"
        torch.save(ckpt, path)
    before = (run / "recipe.yaml").read_text()
    assert main(["train", "--resume", str(run), "trainer.max_epochs=2"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "acclimate run info: image_size: expected an integer" in line and str(run) in line
    assert (run / "recipe.yaml").read_text() == before  # nothing of the run rewritten
