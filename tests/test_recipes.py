"""Every shipped recipe, run for real through ``acclimate train`` on CPU: the recipe as shipped,
with overrides that only shrink it (tiny timm backbone from a local 3-channel weights file, tiny
generated data of the recipe's own kind, 32-px images, one epoch), then exported to a folder that
stock timm loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import make_class_folders
from safetensors.torch import load_file, save_file

from acclimate.cli import main
from acclimate.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(
    p.relative_to(ROOT) for p in (ROOT / "recipes").rglob("*.yaml") if "_base" not in p.parts
)
BACKBONE = "test_vit"  # ViT methods need a ViT; it has blocks, attn.qkv/proj and mlp.fc1/fc2
TEACHER = "test_vit3"  # wider than the student (96 vs 64), as in the recipe (384 vs 512)
SIZE = 32

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

# Recipes that fail today because of a bug in the package or the recipe: path -> reason.
KNOWN_FAILURES: dict[str, str] = {}


def recipe_settings(path: Path) -> dict:
    """What the recipe and its ``base`` chain set themselves, merged by acclimate's own loader
    (``load_recipe``), without the defaults that validation fills in (two levels: section.key)."""
    recipe = load_recipe(path)
    settings: dict = {}
    for key in recipe.origin:  # every key some file of the chain set
        section, _, name = key.partition(".")
        if not name:
            value = recipe.data[section]
            settings.setdefault(section, {} if isinstance(value, dict) else value)
        elif "." not in name:
            settings.setdefault(section, {})[name] = recipe.data[section][name]
    return settings


# ----------------------------------------------------------------------------- tiny data


def make_npz(path: Path, n_train: int = 12, n_val: int = 6, seed: int = 0) -> Path:
    """A MedMNIST-style .npz: ``{train,val}_images`` (N, H, W, 3) uint8 + ``_labels`` (N, 1)."""
    rng = np.random.default_rng(seed)
    colours = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)], dtype=np.float32)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val)):
        labels = np.repeat(np.arange(len(colours)), n)
        images = colours[labels][:, None, None, :] + rng.normal(0, 40, (len(labels), SIZE, SIZE, 3))
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None].astype(np.int64)
    np.savez(path, **arrays)
    return path


def make_geotiff_folders(root: Path, n_train: int = 6, n_val: int = 3) -> Path:
    """``root/{train,val}/class_k/*.tif``: 13-band uint16 Sentinel-2 tiles with band names."""
    from test_domain_data import S2_BANDS, s2_tile, write_geotiff

    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(3):
            for j in range(n):
                tile = s2_tile(100 * c + j + 10 * n, size=SIZE, offset=4000 * c)
                write_geotiff(root / split / f"class_{c}" / f"{j}.tif", tile, S2_BANDS)
    return root


def make_dicom_folders(root: Path, n_train: int = 6, n_val: int = 3) -> Path:
    """``root/{train,val}/class_k/*.dcm``: 12-bit CT slices whose HU level depends on the class."""
    from test_domain_data import write_dicom

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(3):
            for j in range(n):
                stored = rng.normal(1024 + 100 * c, 60, (SIZE, SIZE)).clip(0, 4095)
                write_dicom(root / split / f"class_{c}" / f"{j}.dcm", stored)
    return root


def make_data(tmp_path: Path, settings: dict) -> Path:
    """Tiny data of the recipe's kind: DICOM, 13-band GeoTIFF, .npz, or (gray/RGB) PNG folders."""
    data = settings.get("data", {})
    channels, train = int(data.get("channels", 3)), str(data.get("train", ""))
    if "dicom" in train or "dicom" in str(settings.get("name", "")):
        return make_dicom_folders(tmp_path / "dicom")
    if channels == 13:
        return make_geotiff_folders(tmp_path / "s2")
    if train.endswith(".npz"):
        return make_npz(tmp_path / "tiny.npz")
    return make_class_folders(tmp_path / "images", channels=1 if channels == 1 else 3)


# ----------------------------------------------------------------------------- the test


def shrinking_overrides(tmp_path: Path, settings: dict, data: Path) -> list[str]:
    weights = tmp_path / f"{BACKBONE}.safetensors"  # RGB weights: in_chans adaptation is exercised
    save_file(timm.create_model(BACKBONE, num_classes=0).state_dict(), str(weights))
    overrides = [
        f"backbone.name={BACKBONE}",
        f"backbone.weights={weights}",
        f"data.train={data}",
        "data.train_split=train",
        f"data.image_size={SIZE}",
        "data.batch_size=8",
        "data.num_workers=0",
        f"eval.data={data}",
        "eval.train_split=train",
        "eval.test_split=val",
        "eval.every_n_epochs=0",
        "eval.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.max_time=null",  # a time budget ignores max_epochs: it would run its whole time
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]
    # The recipe's schedule shrunk with it: N epochs -> 1, so warm-ups last 1/N as long (as is,
    # a one-epoch frozen warm-up would leave the backbone untouched in a one-epoch run).
    epochs = float(settings.get("trainer", {}).get("max_epochs", 1))
    for key in ("freeze_backbone_epochs", "warmup_epochs"):
        if key in settings.get("optim", {}):
            overrides.append(f"optim.{key}={float(settings['optim'][key]) / epochs}")
    augment = settings.get("augment", {})
    if augment.get("local_size") and int(augment["local_size"]) > SIZE // 2:
        overrides.append(f"augment.local_size={SIZE // 2}")  # a multiple of test_vit's 16 px
    method = settings.get("method", {})
    if method.get("name") == "distill":
        teacher = tmp_path / f"{TEACHER}.safetensors"
        save_file(timm.create_model(TEACHER, num_classes=0).state_dict(), str(teacher))
        overrides += [f"method.teacher_name={TEACHER}", f"method.teacher_weights={teacher}"]
        if "teacher_scale" not in method:  # a scaled teacher sees the crops upsampled instead
            overrides.append(f"method.teacher_image_size={SIZE}")
    if settings.get("eval", {}).get("reference_size"):
        overrides.append("eval.reference_size=48")  # the start at a larger size, kept small
    return overrides


def recipe_case(path: Path) -> object:
    reason = KNOWN_FAILURES.get(path.as_posix())
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(path, id=path.relative_to("recipes").as_posix(), marks=marks)


@pytest.mark.parametrize("recipe", [recipe_case(p) for p in RECIPES])
def test_recipe_trains_and_exports_to_stock_timm(tmp_path: Path, recipe: Path) -> None:
    path = ROOT / recipe
    settings = recipe_settings(path)
    channels = int(settings.get("data", {}).get("channels", 3))
    data = make_data(tmp_path, settings)
    run, export = tmp_path / "run", tmp_path / "export"
    overrides = shrinking_overrides(tmp_path, settings, data)
    assert main(["train", str(path), f"run_dir={run}", *overrides]) == 0

    metrics = json.loads((run / "metrics.json").read_text())
    for when in ("before", "after"):  # the eval data is labelled: before/after must be there
        # 3 classes told apart by colour, HU level or band offsets: chance is 1/3
        assert metrics[when]["knn_top1"] > 0.5, metrics
        assert metrics[when]["linear_top1"] > 0.5, metrics

    assert main(["export", str(run), "--out", str(export)]) == 0
    start = load_file(str(tmp_path / f"{BACKBONE}.safetensors"))
    exported = load_file(str(export / "model.safetensors"))
    assert set(exported) == set(start)  # a plain backbone: no heads, teacher or LoRA factors
    moved = [k for k in start if k in exported and not torch.equal(exported[k], start[k])]
    assert moved, "the exported backbone equals the starting weights: nothing was trained"
    adapter = settings.get("adapter")
    if adapter:  # ExPLoRA: LoRA merged into the targets, last blocks + norms trained, rest frozen
        depth = len(timm.create_model(BACKBONE).blocks)
        first_full = depth - int(adapter.get("unfreeze_last_blocks", 0))
        assert "blocks.0.attn.qkv.weight" in moved  # a LoRA target of a frozen block, merged
        assert "blocks.0.norm1.weight" in moved or not adapter.get("train_norms")
        frozen = [f"blocks.{i}.mlp.fc1.weight" for i in range(first_full)]
        assert not set(frozen) & set(moved), moved  # not a LoRA target: untouched
        assert f"blocks.{first_full}.mlp.fc1.weight" in moved  # trained in full
        trained_stem = "patch_embed.proj.weight" in moved
        assert trained_stem == bool(adapter.get("train_patch_embed")), moved
    stock = timm.create_model(f"local-dir:{export}", pretrained=True, num_classes=0).eval()
    width = timm.create_model(BACKBONE, num_classes=0).num_features
    with torch.no_grad():
        features = stock(torch.randn(2, channels, SIZE, SIZE))
    assert features.shape == (2, width)
    assert torch.isfinite(features).all()
