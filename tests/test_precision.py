"""``trainer.precision: auto`` (`acclimate.precision`): bf16 autocast for transformers where a
bf16 matmul is fast on this CPU, float32 for CNNs and narrow models, explicit values untouched,
and the run trains at the precision it decided and logs why."""

from __future__ import annotations

import pytest
from test_cli import write_recipe

import acclimate
from acclimate import precision
from acclimate.backbones import create_backbone
from acclimate.config import load_recipe
from acclimate.precision import is_transformer, model_width, resolve_precision
from acclimate.trainer_settings import TrainerSettings


def _speedup(value: float):
    calls: list[int] = []

    def fake(width: int, tokens: int = 2048, repeats: int = 3) -> float:
        calls.append(width)
        return value

    return fake, calls


def test_transformers_and_cnns_are_told_apart():
    vit, cnn = create_backbone("test_vit"), create_backbone("test_resnet")
    assert is_transformer(vit) and not is_transformer(cnn)
    assert model_width(vit) == vit.embed_dim


@pytest.mark.parametrize(("speedup", "chosen"), [(4.0, "bf16-mixed"), (1.3, "32-true")])
def test_a_wide_transformer_gets_bf16_where_the_probe_finds_it_fast(
    monkeypatch, speedup, chosen, caplog
):
    fake, calls = _speedup(speedup)
    monkeypatch.setattr(precision, "bf16_matmul_speedup", fake)
    monkeypatch.setattr(precision, "MIN_WIDTH", 16)
    vit = create_backbone("test_vit")
    with caplog.at_level("INFO", logger="acclimate.precision"):
        assert resolve_precision("auto", "cpu", [vit, vit]) == chosen
    assert calls == [vit.embed_dim]
    assert f"auto -> {chosen}" in caplog.text and f"{speedup:.1f}x" in caplog.text


def test_cnns_narrow_models_and_explicit_values_never_probe(monkeypatch):
    fake, calls = _speedup(10.0)
    monkeypatch.setattr(precision, "bf16_matmul_speedup", fake)
    vit, cnn = create_backbone("test_vit"), create_backbone("test_resnet")
    assert resolve_precision("auto", "cpu", [vit, cnn]) == "32-true"  # a CNN among them
    assert vit.embed_dim < precision.MIN_WIDTH
    assert resolve_precision("auto", "cpu", [vit]) == "32-true"  # test-sized
    assert resolve_precision("auto", "cpu", []) == "32-true"  # unknown networks
    assert resolve_precision("bf16-mixed", "cpu", [cnn]) == "bf16-mixed"
    assert resolve_precision("32-true", "cpu", [vit]) == "32-true"
    assert calls == []


def test_the_real_probe_measures_a_ratio():
    assert precision.bf16_matmul_speedup(64, tokens=256, repeats=1) > 0


def test_auto_is_the_default_and_a_valid_recipe_value(tmp_path, tiny_dataset):
    assert TrainerSettings().precision == "auto"
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    loaded = load_recipe(recipe, ["trainer.precision=auto"])
    assert loaded.data["trainer"]["precision"] == "auto"
    trainer = TrainerSettings(max_epochs=1, progress_bar=False).build(tmp_path / "run", [])
    assert trainer.precision == "32-true"  # build() alone knows no networks: float32


def test_a_run_trains_at_the_precision_auto_chose(monkeypatch, tmp_path, tiny_dataset):
    fake, calls = _speedup(4.0)
    monkeypatch.setattr(precision, "bf16_matmul_speedup", fake)
    monkeypatch.setattr(precision, "MIN_WIDTH", 16)
    chosen: list[str] = []
    build = TrainerSettings.build

    def spy(self, *a, **k):  # noqa: ANN002, ANN003
        trainer = build(self, *a, **k)
        chosen.append(trainer.precision)
        return trainer

    monkeypatch.setattr(TrainerSettings, "build", spy)
    recipe = write_recipe(tmp_path, tiny_dataset, "test_vit")
    run = acclimate.train(
        recipe,
        run_dir=tmp_path / "run",
        export=False,
        trainer={"max_epochs": 1},
        eval={"before_after": False, "every_n_epochs": 0},
    )
    assert chosen == ["bf16-mixed"] and calls  # the teacher and student: one probe
    assert "trainer.precision auto -> bf16-mixed" in (run.folder / "train.log").read_text()
