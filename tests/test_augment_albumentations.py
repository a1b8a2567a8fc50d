"""A user's serialised albumentations pipeline (``augment.albumentations``): loads from YAML or
JSON, applies to N-band uint8 and float views, repeats with the seed, fails in one clear line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
A = pytest.importorskip("albumentations")

from acclimate.config import ConfigError, construct, load_recipe  # noqa: E402
from acclimate.data.transforms import MultiCropTransform  # noqa: E402
from acclimate.data.user_augment import AlbumentationsView, load_pipeline  # noqa: E402


def _pipeline() -> object:
    return A.Compose(
        [
            A.HorizontalFlip(p=1.0),
            A.RandomBrightnessContrast(p=1.0),
            A.CoarseDropout(
                num_holes_range=(1, 2),
                hole_height_range=(0.2, 0.3),
                hole_width_range=(0.2, 0.3),
                p=0.5,
            ),
        ]
    )


@pytest.fixture(params=["yaml", "json"])
def pipeline_file(tmp_path: Path, request) -> Path:
    path = tmp_path / f"pipeline.{request.param}"
    A.save(_pipeline(), str(path), data_format=request.param)
    return path


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels", [1, 3, 13])
def test_pipeline_applies_to_n_band_views(pipeline_file: Path, dtype, channels: int) -> None:
    view = AlbumentationsView(load_pipeline(pipeline_file))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(channels, 16, 16, generator=g)
    x = (x * 255).to(torch.uint8) if dtype == torch.uint8 else x
    torch.manual_seed(5)
    out = view(x)
    assert out.shape == x.shape and out.dtype == dtype
    assert not torch.equal(out, x)
    torch.manual_seed(5)
    assert torch.equal(view(x), out)  # seeded from torch's generator: repeats, resumes
    torch.manual_seed(6)
    assert not torch.equal(view(x), out)


@pytest.mark.parametrize("device", ["per_sample", "cpu"])
def test_multicrop_applies_it_to_every_view(pipeline_file: Path, device: str) -> None:
    c = 13
    t = MultiCropTransform(
        16,
        8,
        2,
        preset="satellite",
        channels=c,
        mean=[0.5] * c,
        std=[0.2] * c,
        device=device,
        albumentations=str(pipeline_file),
    )
    image = torch.randint(0, 256, (c, 24, 24), dtype=torch.uint8)
    torch.manual_seed(0)
    views = t(image)
    assert [v.shape for v in views["global"]] == [(c, 16, 16)] * 2
    assert [v.shape for v in views["local"]] == [(c, 8, 8)] * 2
    torch.manual_seed(0)
    again = t(image)
    for a, b in zip(
        views["global"] + views["local"], again["global"] + again["local"], strict=True
    ):
        assert torch.equal(a, b)


def test_bad_pipelines_fail_in_one_line_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.yaml: file not found; write it with .*A\.save"):
        load_pipeline(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=r"pipeline\.txt: expected a \.yaml, \.yml or \.json"):
        load_pipeline(tmp_path / "pipeline.txt")
    broken = tmp_path / "broken.yaml"
    broken.write_text("transform: {__class_fullname__: NoSuchTransform, p: 1.0}\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not a pipeline albumentations .*A\.save"):
        load_pipeline(broken)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match=r"garbage\.json: not a pipeline") as info:
        load_pipeline(garbage)
    assert "\n" not in str(info.value)

    resize = tmp_path / "resize.yaml"
    A.save(A.Compose([A.Resize(8, 8)]), str(resize), data_format="yaml")
    view = AlbumentationsView(load_pipeline(resize), str(resize))
    with pytest.raises(ValueError, match="leave out resizing, cropping"):
        view(torch.zeros(3, 16, 16, dtype=torch.uint8))


def test_recipe_key_is_checked_before_training(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("backbone:\n  name: test_resnet\ndata:\n  train: images\n")
    with pytest.raises(ConfigError, match="augment.albumentations: must be an existing"):
        load_recipe(recipe, [f"augment.albumentations={tmp_path / 'nope.yaml'}"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("transform: {__class_fullname__: NoSuchTransform, p: 1.0}\n")
    r = load_recipe(recipe, [f"augment.albumentations={bad}"])
    stats = {"mean": [0.5] * 3, "std": [0.2] * 3, "channels": 3}
    with pytest.raises(ConfigError, match=r"augment: albumentations: .*bad\.yaml: not a pipeline"):
        construct(r, "augment", MultiCropTransform, **stats)
