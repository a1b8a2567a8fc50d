"""``acclimate.train(recipe, **overrides)``: the CLI's path from Python, export included."""

from __future__ import annotations

import timm
import torch
from test_cli import write_recipe

import acclimate
from acclimate.api import as_overrides


def test_overrides_nested_and_dotted():
    got = as_overrides({"trainer": {"max_epochs": 2, "precision": "bf16-mixed"}, "optim.lr": 1e-3})
    assert got == ["trainer.max_epochs=2", 'trainer.precision="bf16-mixed"', "optim.lr=0.001"]
    assert as_overrides({"data.clip": None, "data.bands": [1, 2]}) == [
        "data.clip=null",
        "data.bands=[1, 2]",
    ]


def test_train_returns_the_run_with_metrics_and_a_timm_loadable_export(tmp_path, tiny_dataset):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = acclimate.train(
        recipe, run_dir=tmp_path / "run", trainer={"max_epochs": 1}, **{"eval.every_n_epochs": 0}
    )
    assert run.folder == tmp_path / "run"
    assert run.metrics["before"]["n_test"] == run.metrics["after"]["n_test"] == 18
    assert "->" in run.summary()
    assert run.export == run.folder / "export"
    # the run's log holds acclimate's INFO records, though the caller set no logging up
    log = (run.folder / "train.log").read_text()
    assert "measuring the starting backbone" in log and "measuring the adapted backbone" in log
    model = timm.create_model(f"local-dir:{run.export}", pretrained=True, num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape[0] == 1
    again = acclimate.train(run.folder, resume=True, export=False, trainer={"max_epochs": 2})
    assert again.export is None
    saved = torch.load(run.folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 1
