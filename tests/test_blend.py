"""``export.start_blend``: WiSE-FT weight interpolation of the adapted backbone with its start,
in the run's after-evaluation and in every export of the run."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from test_cli import write_recipe
from torch import nn

import acclimate
from acclimate.cli import main
from acclimate.config import load_recipe
from acclimate.errors import AcclimateError, ConfigError
from acclimate.export.blend import blend_with_start, blended_copy, start_state


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def test_blend_interpolates_weights_and_norm_statistics_not_counters():
    start_net = _net()
    start = start_state(start_net)
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()
    net(torch.randn(8, 3, 8, 8))  # moves running statistics, counts a batch
    adapted = {k: v.clone() for k, v in net.state_dict().items()}

    half = blended_copy(net, start, 0.5)
    got = half.state_dict()
    for k, v in adapted.items():
        if v.is_floating_point():
            torch.testing.assert_close(got[k], (start[k] + v) / 2)
        else:  # num_batches_tracked: the adapted network's
            assert torch.equal(got[k], v)
    assert torch.equal(net.state_dict()["0.weight"], adapted["0.weight"])  # a copy was blended

    zero = blended_copy(net, start, 0.0)
    for k, v in start.items():
        torch.testing.assert_close(zero.state_dict()[k], v)
    assert blend_with_start(net, start, 1.0) is net


def test_blend_refuses_a_network_that_is_not_its_start():
    other = nn.Sequential(nn.Conv2d(3, 5, 3))
    with pytest.raises(AcclimateError, match="start_blend"):
        blend_with_start(other, start_state(_net()), 0.5)


def test_recipe_checks_the_range_and_a_start_to_blend_with(tmp_path, tiny_dataset):
    recipe = write_recipe(tmp_path, tiny_dataset)
    with pytest.raises(ConfigError, match=r"export\.start_blend: must be in \[0, 1\]"):
        load_recipe(recipe, ["export.start_blend=1.5"])
    with pytest.raises(ConfigError, match="random weights"):
        load_recipe(recipe, ["export.start_blend=0.5", "backbone.weights=null"])
    assert load_recipe(recipe).data["export"]["start_blend"] == 1.0


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_a_run_measures_and_exports_the_blend(tmp_path, tiny_dataset):
    """start_blend 0: the after-evaluation and the export are exactly the start; an export
    of the same run at 0.5 is the midpoint of the start and the adapted weights."""
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = acclimate.train(
        recipe,
        run_dir=tmp_path / "run",
        trainer={"max_epochs": 1},
        optim={"freeze_backbone_epochs": 0},
        **{"eval.every_n_epochs": 0, "export.start_blend": 0.0},
    )
    m = run.metrics
    assert m["start_blend"] == 0.0
    assert m["after"]["linear_top1"] == m["before"]["linear_top1"]
    assert m["after"]["knn_top1"] == m["before"]["knn_top1"]
    start = load_file(str(tmp_path / "test_resnet.safetensors"))
    exported = _weights(run.export)
    for k, v in start.items():
        if v.is_floating_point():
            torch.testing.assert_close(exported[k], v)
    meta = json.loads((run.export / "acclimate.json").read_text())
    assert meta["start_blend"] == 0.0 and meta["metrics"]["after"] == m["after"]  # measured ones

    full, half = tmp_path / "full", tmp_path / "half"
    assert main(["export", str(run.folder), "--out", str(full), "--start-blend", "1"]) == 0
    assert main(["export", str(run.folder), "--out", str(half), "--start-blend", "0.5"]) == 0
    adapted, mid = _weights(full), _weights(half)
    # the run measured the blend at 0: exports at other blends do not carry its "after"
    for folder, keep in ((full, "1"), (half, "0.5")):
        other = json.loads((folder / "acclimate.json").read_text())["metrics"]
        assert "after" not in other and "delta" not in other and "before" in other
        assert other["after_left_out"] == f"start blend 0, not {keep}"
        assert f"measured start blend 0, not {keep}." in (folder / "README.md").read_text()
    moved = [
        k for k, v in start.items() if v.is_floating_point() and not torch.equal(v, adapted[k])
    ]
    assert moved  # training changed the weights, so the blend has something to blend
    for k in moved:
        torch.testing.assert_close(mid[k], (start[k] + adapted[k]) / 2)
    model = timm.create_model(f"local-dir:{half}", pretrained=True, num_classes=0).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()

    assert main(["export", str(full), "--out", str(tmp_path / "x"), "--start-blend", "0.5"]) != 0
    assert (
        main(["export", str(run.folder), "--out", str(tmp_path / "y"), "--start-blend", "2"]) != 0
    )
