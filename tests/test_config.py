"""Recipes: base chains, overrides, defaults from signatures, one-line errors, round trips."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from acclimate.backbones import create_backbone
from acclimate.config import COMMAND_LINE, ConfigError, construct, load_recipe
from acclimate.data.transforms import MultiCropTransform
from acclimate.eval.protocol import EvalSettings
from acclimate.ssl import METHODS, OptimSettings
from acclimate.trainer_settings import TrainerSettings

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# The smallest valid recipe: data.train is not opened by load_recipe, so any string works.
BACKBONE = "backbone:\n  name: test_resnet\n"
MINIMAL = BACKBONE + "data:\n  train: images\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    """The message of the ConfigError that loading ``path`` raises; it must be one line."""
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _plain(x: object) -> object:
    """Tuples as lists, as YAML stores them."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    return _write(tmp_path / "minimal.yaml", MINIMAL)


# --- base chains ---------------------------------------------------------------------------------


def test_child_overrides_parent(tmp_path: Path) -> None:
    _write(
        tmp_path / "parent.yaml",
        """
        method:
          out_dim: 128
          hidden_dim: 64
        optim:
          lr: 1.0e-3
        """,
    )
    child = _write(
        tmp_path / "child.yaml", "base: parent.yaml\n" + MINIMAL + "method:\n  out_dim: 256\n"
    )
    r = load_recipe(child)
    assert r.data["method"]["out_dim"] == 256  # child wins
    assert r.data["method"]["hidden_dim"] == 64  # parent kept where the child is silent
    assert r.data["optim"]["lr"] == 1e-3
    assert r.files == [(tmp_path / "parent.yaml").resolve(), child.resolve()]
    assert r.data["name"] == "child"  # default name: the recipe's file stem


def test_relative_base_resolved_from_the_child_folder(tmp_path: Path, monkeypatch) -> None:
    _write(tmp_path / "recipes" / "_base" / "common.yaml", "method:\n  out_dim: 96\n")
    _write(tmp_path / "recipes" / "_base" / "vit.yaml", "base: common.yaml\noptim:\n  lr: 2.0e-4\n")
    child = _write(tmp_path / "recipes" / "exp" / "run.yaml", "base: ../_base/vit.yaml\n" + MINIMAL)
    monkeypatch.chdir(tmp_path)  # the working folder must not matter
    r = load_recipe(Path("recipes/exp/run.yaml"))
    assert r.data["method"]["out_dim"] == 96  # grandparent, through the parent's own base
    assert r.data["optim"]["lr"] == 2e-4
    assert r.files[-1] == child.resolve()


def test_list_of_bases_later_wins(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "method:\n  out_dim: 100\n  hidden_dim: 10\n")
    _write(tmp_path / "b.yaml", "method:\n  out_dim: 200\noptim:\n  lr: 3.0e-4\n")
    child = _write(tmp_path / "c.yaml", "base: [a.yaml, b.yaml]\n" + MINIMAL)
    r = load_recipe(child)
    assert r.data["method"]["out_dim"] == 200
    assert r.data["method"]["hidden_dim"] == 10
    assert r.data["optim"]["lr"] == 3e-4


def test_diamond_bases_keep_the_intermediate_override(tmp_path: Path) -> None:
    _write(tmp_path / "common.yaml", "optim:\n  lr: 1.0e-3\n")
    _write(tmp_path / "a.yaml", "base: common.yaml\noptim:\n  lr: 2.0e-3\n")
    _write(tmp_path / "b.yaml", "base: common.yaml\nmethod:\n  out_dim: 64\n")
    child = _write(tmp_path / "c.yaml", "base: [a.yaml, b.yaml]\n" + MINIMAL)
    r = load_recipe(child)
    assert r.data["method"]["out_dim"] == 64
    assert r.data["optim"]["lr"] == 2e-3  # b does not set lr: a's override must survive


def test_base_loop_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "one.yaml", "base: two.yaml\n" + MINIMAL)
    _write(tmp_path / "two.yaml", "base: one.yaml\n")
    assert "loops back" in _error(tmp_path / "one.yaml")
    selfish = _write(tmp_path / "self.yaml", "base: self.yaml\n" + MINIMAL)
    assert "loops back" in _error(selfish)


def test_missing_base_names_the_child(tmp_path: Path) -> None:
    child = _write(tmp_path / "c.yaml", "base: nowhere.yaml\n" + MINIMAL)
    message = _error(child)
    assert str(child.resolve()) in message
    assert "nowhere.yaml" in message


# --- overrides and defaults ----------------------------------------------------------------------


def test_dotted_overrides(minimal: Path) -> None:
    r = load_recipe(
        minimal,
        [
            "optim.lr=1e-4",
            "augment.global_scale=[0.5,1.0]",
            "trainer.max_epochs=2",
            "method.out_dim=512",
            "eval.before_after=false",
            "name=trial",
        ],
    )
    assert r.data["optim"]["lr"] == 1e-4
    assert isinstance(r.data["optim"]["lr"], float)
    assert list(r.data["augment"]["global_scale"]) == [0.5, 1.0]
    assert r.data["trainer"]["max_epochs"] == 2
    assert r.data["method"]["out_dim"] == 512
    assert r.data["eval"]["before_after"] is False
    assert r.data["name"] == "trial"
    assert r.origin["optim.lr"] == COMMAND_LINE


def test_override_beats_every_file(tmp_path: Path) -> None:
    _write(tmp_path / "p.yaml", "trainer:\n  max_epochs: 5\n")
    child = _write(tmp_path / "c.yaml", "base: p.yaml\n" + MINIMAL + "trainer:\n  max_epochs: 7\n")
    assert load_recipe(child, ["trainer.max_epochs=9"]).data["trainer"]["max_epochs"] == 9


def test_scientific_notation_in_yaml_is_a_float(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", MINIMAL + "optim:\n  lr: 5e-4\n  min_lr: 1.0e-6\n")
    optim = load_recipe(path).data["optim"]
    assert optim["lr"] == 5e-4 and optim["min_lr"] == 1e-6


def test_defaults_filled_from_signatures(minimal: Path) -> None:
    d = load_recipe(minimal).data
    assert d["method"]["name"] == "dino"
    assert d["method"]["student_temp"] == 0.1
    assert d["method"]["momentum_teacher"] == 0.996
    assert d["optim"]["lr"] == OptimSettings().lr
    assert d["trainer"]["max_epochs"] == TrainerSettings().max_epochs
    assert d["eval"]["knn_k"] == EvalSettings().knn_k
    assert d["data"]["batch_size"] == 64
    assert d["backbone"]["weights"] is None
    assert (d["name"], d["seed"], d["run_dir"]) == ("minimal", 0, None)
    # every section is complete: the keys are exactly the constructor's arguments
    assert set(d["optim"]) == set(OptimSettings().to_dict())
    # keys the trainer fills in itself are not recipe keys
    assert "mean" not in d["augment"] and "transform" not in d["data"]
    assert "backbone" not in d["method"]


def test_in_chans_follows_data_channels_rgb(minimal: Path) -> None:
    assert load_recipe(minimal).data["backbone"]["in_chans"] == 3


def test_in_chans_follows_data_channels_grayscale(minimal: Path) -> None:
    r = load_recipe(minimal, ["data.channels=1"])
    assert r.data["backbone"]["in_chans"] == 1


def test_in_chans_mismatch_is_an_error(minimal: Path) -> None:
    message = _error(minimal, ("data.channels=1", "backbone.in_chans=3"))
    assert message.startswith(f"{COMMAND_LINE}: backbone.in_chans:")


# --- errors: one line, naming the key and the file that set it -----------------------------------


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", MINIMAL + "method:\n  studnet_temp: 0.2\n")
    message = _error(path)
    assert message.startswith(f"{path.resolve()}: method.studnet_temp: unknown key")
    assert "did you mean 'student_temp'?" in message


def test_unknown_key_set_in_parent_names_the_parent(tmp_path: Path) -> None:
    parent = _write(tmp_path / "_base" / "p.yaml", "optim:\n  weight_decy: 0.1\n")
    child = _write(tmp_path / "c.yaml", "base: _base/p.yaml\n" + MINIMAL + "optim:\n  lr: 1.0\n")
    message = _error(child)
    assert message.startswith(f"{parent.resolve()}: optim.weight_decy: unknown key")
    assert "did you mean 'weight_decay'?" in message
    assert str(child.resolve()) not in message


def test_bad_key_on_the_command_line_names_the_command_line(minimal: Path) -> None:
    message = _error(minimal, ("method.studnet_temp=0.2",))
    assert message.startswith(f"{COMMAND_LINE}: method.studnet_temp: unknown key")
    assert "'student_temp'" in message


def test_reserved_key_is_unknown(minimal: Path) -> None:
    assert "augment.mean: unknown key" in _error(minimal, ("augment.mean=[0.5,0.5,0.5]",))


def test_unknown_section(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", MINIMAL + "optimizer:\n  lr: 1.0\n")
    message = _error(path)
    assert message.startswith(f"{path.resolve()}: optimizer: unknown section")
    assert "did you mean 'optim'?" in message


def test_unknown_method(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", MINIMAL + "method:\n  name: dinov3\n")
    message = _error(path)
    assert message.startswith(f"{path.resolve()}: method.name: unknown method 'dinov3'")
    assert "did you mean 'dinov2'?" in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('trainer:\n  max_epochs: "ten"\n', "trainer.max_epochs", "expected int, got 'ten'"),
        ("data:\n  train: x\n  batch_size: 8.5\n", "data.batch_size", "expected int"),
        ("data:\n  train: x\n  batch_size: true\n", "data.batch_size", "expected int"),
        ("optim:\n  lr: fast\n", "optim.lr", "expected float"),
        ("optim:\n  optimizer: lamb\n", "optim.optimizer", "got 'lamb'"),
        ("augment:\n  global_scale: 0.5\n", "augment.global_scale", "expected"),
        ("seed: abc\n", "seed", "expected int"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, key: str, expected: str) -> None:
    base = BACKBONE if text.startswith("data:") else MINIMAL
    path = _write(tmp_path / "r.yaml", base + text)
    message = _error(path)
    assert message.startswith(f"{path.resolve()}: {key}: ")
    assert expected in message


def test_int_fits_float(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", MINIMAL + "optim:\n  lr: 1\n")
    assert load_recipe(path).data["optim"]["lr"] == 1


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=0", "data.batch_size"),
        ("data.image_size=-32", "data.image_size"),
        ("trainer.max_epochs=0", "trainer.max_epochs"),
    ],
)
def test_impossible_values_rejected_by_load(minimal: Path, override: str, key: str) -> None:
    message = _error(minimal, (override,))
    value = override.split("=")[1]
    assert message == f"{COMMAND_LINE}: {key}: must be >= 1, got {value}"


def test_impossible_value_in_file_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", BACKBONE + "data:\n  train: x\n  batch_size: 0\n")
    assert _error(path) == f"{path.resolve()}: data.batch_size: must be >= 1, got 0"


@pytest.mark.parametrize(
    ("text", "key", "rule"),
    [
        ("optim:\n  backbone_lr_mult: 0\n", "optim.backbone_lr_mult", "must be > 0, got 0"),
        ("optim:\n  warmup_epochs: -1\n", "optim.warmup_epochs", "must be >= 0, got -1"),
        ("eval:\n  knn_k: 0\n", "eval.knn_k", "must be >= 1, got 0"),
        (
            "augment:\n  global_scale: [0.9, 0.5]\n",
            "augment.global_scale",
            "must be [min, max] with min <= max, each in (0, 1], got [0.9, 0.5]",
        ),
    ],
)
def test_values_constructors_reject_are_rejected_by_load(
    tmp_path: Path, text: str, key: str, rule: str
) -> None:
    """What the constructors check is checked again at load, before any work starts."""
    path = _write(tmp_path / "r.yaml", MINIMAL + text)
    assert _error(path) == f"{path.resolve()}: {key}: {rule}"


def test_construct_error_names_the_section_and_the_command_line(minimal: Path) -> None:
    recipe = load_recipe(minimal, ["optim.min_lr=0"])
    recipe.data["optim"]["min_lr"] = -1  # past load's checks: the constructor's own check
    with pytest.raises(ConfigError, match=f"^{COMMAND_LINE}: optim: min_lr must be >= 0"):
        construct(recipe, "optim", OptimSettings)


def test_negative_lr_is_a_config_error(minimal: Path) -> None:
    """Today ``construct`` catches it; once load_recipe does (see below), load will."""
    with pytest.raises(ConfigError, match=f"^{COMMAND_LINE}: optim(: |\\.)lr"):
        recipe = load_recipe(minimal, ["optim.lr=-1"])
        construct(recipe, "optim", OptimSettings)


def test_negative_lr_rejected_by_load(minimal: Path) -> None:
    assert _error(minimal, ("optim.lr=-1",)).startswith(f"{COMMAND_LINE}: optim.lr:")


def test_missing_backbone_section(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", "data:\n  train: images\n")
    message = _error(path)
    assert message.startswith(f"{path.resolve()}: backbone: section is missing")


def test_missing_required_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", "backbone:\n  weights: null\ndata:\n  train: images\n")
    assert _error(path).startswith(f"{path.resolve()}: backbone.name: required key is missing")


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", MINIMAL + "optim: 0.1\n")
    assert _error(path).startswith(f"{path.resolve()}: optim: expected a mapping")


def test_invalid_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", "backbone: [unclosed\n")
    message = _error(path)
    assert str(path.resolve()) in message and "not valid YAML" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", "- backbone\n- data\n")
    assert "expected a mapping" in _error(path)


def test_missing_file(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "not found" in message


def test_malformed_override(minimal: Path) -> None:
    message = _error(minimal, ("trainer.max_epochs",))
    assert message.startswith(COMMAND_LINE) and "key=value" in message


# --- round trip: the saved recipe of a run is how it resumes -------------------------------------


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    _write(tmp_path / "p.yaml", "method:\n  out_dim: 128\naugment:\n  n_local: 2\n")
    child = _write(tmp_path / "c.yaml", "base: p.yaml\n" + MINIMAL + "optim:\n  lr: 1.0e-3\n")
    r = load_recipe(child, ["augment.global_scale=[0.5,1.0]", "trainer.max_epochs=3"])
    # what training writes back into the recipe before saving it
    r.data["data"]["mean"], r.data["data"]["std"] = [1 / 3, 0.2, 0.1], [0.25, 1 / 7, 0.3]
    r.data["augment"]["global_size"] = 32
    saved = tmp_path / "run" / "recipe.yaml"
    saved.parent.mkdir()
    saved.write_text(r.to_yaml())

    again = load_recipe(saved)
    assert again.data == _plain(r.data)
    assert again.data["name"] == "c"  # the name survives the new file name
    assert again.to_yaml() == r.to_yaml()
    resumed = load_recipe(saved, ["trainer.max_epochs=6"])  # resume with a longer schedule
    assert resumed.data["trainer"]["max_epochs"] == 6
    assert resumed.data["method"] == again.data["method"]


# --- the shipped recipes -------------------------------------------------------------------------


def _shipped() -> list[Path]:
    return sorted(p for p in RECIPES.rglob("*.yaml") if "_base" not in p.parts)


def test_there_are_shipped_recipes() -> None:
    assert _shipped()


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_shipped_recipe_validates(path: Path) -> None:
    r = load_recipe(path)
    assert r.data["backbone"]["in_chans"] == r.data["data"]["channels"]
    # cheap constructors run their own value checks (backbone and data need files: not here)
    construct(r, "optim", OptimSettings)
    construct(r, "trainer", TrainerSettings)
    construct(r, "eval", EvalSettings)
    channels = r.data["data"]["channels"]
    stats = {"mean": [0.5] * channels, "std": [0.2] * channels, "channels": channels}
    construct(r, "augment", MultiCropTransform, **stats)
    method = METHODS[r.data["method"]["name"]]
    cnn_ok = method.check_backbone("test_efficientnet") is None  # MAE and DINOv2 need a ViT
    tiny = create_backbone("test_efficientnet" if cnn_ok else "test_vit", in_chans=channels)
    if r.data["method"]["name"] == "distill":  # its teacher would download: a random one here
        r.data["method"]["teacher_weights"] = None
    module = construct(r, "method", method, backbone=tiny, batch_size=2, optim=None)
    for key, value in r.data["method"].items():
        if key != "name":
            assert module.hparams[key] == value, key


@pytest.mark.parametrize("path", sorted((RECIPES / "_base").glob("*.yaml")), ids=lambda p: p.name)
def test_base_recipe_validates_with_backbone_and_data(tmp_path: Path, path: Path) -> None:
    child = _write(tmp_path / "c.yaml", f"base: {path}\n" + MINIMAL)
    r = load_recipe(child)
    assert path.resolve() in r.files  # after its own bases, if it has any
    assert r.files[-1] == child.resolve()
