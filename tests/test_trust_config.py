"""Trust: every bad value is caught at recipe load with one line naming the key and the allowed
range; run folders, output folders and user checkpoints are checked before work starts; a
tampered export or a diverged run never leaves with exit code 0 or a traceback."""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import typing
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_class_folders
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import write_recipe
from test_config import MINIMAL, _error, _write
from torch import nn

import acclimate
from acclimate import config, preflight, rules
from acclimate.cli import ERROR_EXIT, main
from acclimate.config import COMMAND_LINE, ConfigError, load_recipe, signature_params
from acclimate.export.meta import ExportFileError
from acclimate.preflight import (
    CheckpointError,
    PreflightError,
    check_run_dir,
    estimate_checkpoint_bytes,
    load_checkpoint_file,
)

CPU_ONLY = {"auto": True, "cpu": True, "cuda": False, "mps": False, "tpu": False, "gpu": False}


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    return _write(tmp_path / "minimal.yaml", MINIMAL)


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accelerators of a machine without GPUs, wherever the tests run."""
    monkeypatch.setattr(config, "available_accelerators", lambda: dict(CPU_ONLY))
    monkeypatch.setattr(rules, "available_accelerators", lambda: dict(CPU_ONLY))


# --- recipe values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [  # the values a user found, with the exact line each must give
        ("data.num_workers=-1", "data.num_workers: must be >= 0, got -1"),
        (
            "trainer.accumulate_grad_batches=0",
            "trainer.accumulate_grad_batches: must be >= 1, got 0",
        ),
        ("method.out_dim=0", "method.out_dim: must be >= 1, got 0"),
        ("eval.batch_size=0", "eval.batch_size: must be >= 1, got 0"),
        (
            "trainer.gradient_clip_val=-1",
            "trainer.gradient_clip_val: must be >= 0 (null disables clipping), got -1",
        ),
        ("trainer.max_steps=0", "trainer.max_steps: must be -1 (no limit) or >= 1, got 0"),
        (
            "trainer.accelerator=gpu",
            "trainer.accelerator: must be an accelerator available on this machine (auto, cpu), "
            "got 'gpu'",
        ),
    ],
)
def test_reported_bad_values_fail_at_load(minimal, cpu_only, override, expected):
    assert _error(minimal, (override,)) == f"{COMMAND_LINE}: {expected}"


def test_precision_must_be_one_of_lightnings(minimal):
    message = _error(minimal, ("trainer.precision=64-foo",))
    assert message.startswith(f"{COMMAND_LINE}: trainer.precision: must be one of ")
    assert message.endswith(", got '64-foo'")
    listed = message.split("must be one of ")[1].split(", got")[0].split(", ")
    assert {"32-true", "bf16-mixed", "16-mixed", "64-true"} <= set(listed)
    for good in ("bf16-mixed", "32-true", "16-mixed"):
        assert load_recipe(minimal, [f"trainer.precision={good}"]).data["trainer"]["precision"]


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [  # relatives: counts, probabilities, momenta, temperatures, periods, devices
        ("backbone.in_chans=0", "backbone.in_chans", ">= 1"),
        ("backbone.drop_path_rate=1.5", "backbone.drop_path_rate", "in [0, 1)"),
        ("adapter.lora_rank=-2", "adapter.lora_rank", ">= 0"),
        ("adapter.lora_dropout=1", "adapter.lora_dropout", "in [0, 1)"),
        ("data.channels=0", "data.channels", ">= 1"),
        ("data.stats_images=0", "data.stats_images", ">= 1"),
        ("data.max_bad_fraction=1.5", "data.max_bad_fraction", "in [0, 1)"),
        ("data.slice_axis=3", "data.slice_axis", "in [0, 2]"),
        ("data.std=[0.2,0,0.2]", "data.std", "each > 0"),
        ("augment.n_local=-1", "augment.n_local", ">= 0"),
        ("augment.blur_p=1.1", "augment.blur_p", "in [0, 1]"),
        ("augment.solarize_p=-0.1", "augment.solarize_p", "in [0, 1]"),
        ("augment.local_scale=[0,0.4]", "augment.local_scale", "each in (0, 1]"),
        ("optim.lr=0", "optim.lr", "> 0"),
        ("optim.weight_decay=-1", "optim.weight_decay", ">= 0"),
        ("optim.layer_decay=0", "optim.layer_decay", "in (0, 1]"),
        ("trainer.max_epochs=0", "trainer.max_epochs", ">= 1"),
        ("trainer.num_nodes=0", "trainer.num_nodes", ">= 1"),
        ("trainer.devices=0", "trainer.devices", "auto, a count >= 1"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps", ">= 1"),
        ("trainer.checkpoint_every_n_epochs=-1", "trainer.checkpoint_every_n_epochs", ">= 0"),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches", "a count >= 1"),
        ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches", "fraction in (0, 1]"),
        ("trainer.strategy=dpp", "trainer.strategy", "did you mean 'ddp'?"),
        ("eval.knn_k=0", "eval.knn_k", ">= 1"),
        ("eval.knn_temperature=0", "eval.knn_temperature", "> 0"),
        ("eval.num_workers=-3", "eval.num_workers", ">= 0"),
        ("eval.max_train_images=0", "eval.max_train_images", ">= 1"),
        ("method.student_temp=0", "method.student_temp", "> 0"),
        ("method.teacher_temp=-0.04", "method.teacher_temp", "> 0"),
        ("method.center_momentum=1.2", "method.center_momentum", "in [0, 1]"),
        ("method.momentum_teacher=-0.1", "method.momentum_teacher", "in [0, 1]"),
        ("method.head_layers=0", "method.head_layers", ">= 1"),
        ("seed=-1", "seed", "in [0, 4294967295]"),
        ("optim.lr=.inf", "optim.lr", "a finite number"),
        ("data.mean=[0.5,.nan,0.5]", "data.mean", "a finite number"),
    ],
)
def test_relatives_fail_at_load(minimal, cpu_only, override, key, allowed):
    message = _error(minimal, (override,))
    assert message.startswith(f"{COMMAND_LINE}: {key}: must be ")
    assert allowed in message
    assert ", got " in message


@pytest.mark.parametrize(
    ("method", "override", "key", "allowed"),
    [
        ("simclr", "method.temperature=0", "method.temperature", "> 0"),
        ("moco", "method.momentum=1.5", "method.momentum", "in [0, 1]"),
        ("moco", "method.pred_layers=0", "method.pred_layers", ">= 1"),
        ("byol", "method.dim=0", "method.dim", ">= 1"),
        ("dinov2", "method.mask_ratio=[0.5,0.1]", "method.mask_ratio", "min <= max"),
        ("dinov2", "method.mask_prob=2", "method.mask_prob", "in [0, 1]"),
        ("dinov2", "method.sinkhorn_iters=0", "method.sinkhorn_iters", ">= 1"),
        ("mae", "method.mask_ratio=1", "method.mask_ratio", "in [0, 1)"),
        ("mae", "method.decoder_heads=0", "method.decoder_heads", ">= 1"),
        ("mae", "method.decoder_dim=30", "method.decoder_dim", "multiple of method.decoder_heads"),
    ],
)
def test_method_values_fail_at_load(tmp_path, method, override, key, allowed):
    path = _write(tmp_path / "r.yaml", "backbone:\n  name: test_vit\ndata:\n  train: x\n")
    message = _error(path, (f"method.name={method}", override))
    assert message.startswith(f"{COMMAND_LINE}: {key}: must be ")
    assert allowed in message


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        (["optim.min_lr=0.01", "optim.lr=0.001"], "optim.min_lr", "must be <= optim.lr (0.001)"),
        (
            ["method.momentum_teacher=0.999", "method.momentum_teacher_end=0.99"],
            "method.momentum_teacher_end",
            "must be >= method.momentum_teacher (0.999)",
        ),
        (["data.std=[0.2,0.2]"], "data.std", "must have one value per channel"),
        (["trainer.devices=[0,1]"], "trainer.devices", "must be auto or a process count >= 1"),
    ],
)
def test_keys_that_must_agree(minimal, cpu_only, overrides, key, expected):
    message = _error(minimal, tuple(overrides))
    assert message.startswith(f"{COMMAND_LINE}: {key}: {expected}")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method.name=[1]", "method.name: expected one of dino, dinov2, mae"),
        ("method=5", "method: expected a mapping of keys, got 5"),
        ("trainer=[1]", "trainer: expected a mapping of keys, got [1]"),
        ("data=5", "data: section is missing"),
    ],
)
def test_misshapen_sections_fail_at_load(minimal, override, expected):
    assert _error(minimal, (override,)).startswith(f"{COMMAND_LINE}: {expected}")


def test_bad_value_in_a_file_names_the_file(tmp_path, cpu_only):
    path = _write(tmp_path / "r.yaml", MINIMAL + "trainer:\n  accumulate_grad_batches: 0\n")
    assert _error(path) == (
        f"{path.resolve()}: trainer.accumulate_grad_batches: must be >= 1, got 0"
    )


def _numeric(annotation: object) -> bool:
    return annotation in (int, float) or any(_numeric(a) for a in typing.get_args(annotation))


def test_every_numeric_key_has_a_rule():
    """A new int or float constructor argument needs a row in rules.RULES (or FREE_NUMBERS)."""
    missing = []
    for section, fn in config._sections().items():
        for key, (annotation, _) in signature_params(
            fn, config.RESERVED.get(section, set())
        ).items():
            if _numeric(annotation) and f"{section}.{key}" not in {
                *rules.RULES,
                *rules.FREE_NUMBERS,
            }:
                missing.append(f"{section}.{key}")
    for name, cls in config._methods().items():
        for key, (annotation, _) in signature_params(cls, config.RESERVED["method"]).items():
            if _numeric(annotation) and f"method.{key}" not in rules.RULES:
                missing.append(f"method.{key} ({name})")
    assert not missing


def test_new_trainer_keys_are_checked_when_present(minimal):
    params = signature_params(config._sections()["trainer"])
    for key, bad in (("checkpoint_every_n_steps", -1), ("timeout_s", 0)):
        if key not in params:
            pytest.skip(f"TrainerSettings has no {key} yet")
        message = _error(minimal, (f"trainer.{key}={bad}",))
        assert message.startswith(f"{COMMAND_LINE}: trainer.{key}: must be ")


def test_good_values_still_load(minimal, cpu_only):
    r = load_recipe(
        minimal,
        [
            "trainer.max_steps=-1",
            "trainer.gradient_clip_val=null",
            "trainer.devices=2",
            "trainer.limit_train_batches=0.5",
            "trainer.checkpoint_every_n_epochs=0",
            "eval.every_n_epochs=0",
            "data.num_workers=0",
            "augment.n_local=0",
        ],
    )
    assert r.data["trainer"]["gradient_clip_val"] is None and r.data["trainer"]["devices"] == 2


def _known_keys() -> list[str]:
    keys = [f"{s}.{k}" for s, fn in config._sections().items() for k in signature_params(fn)]
    keys += [f"method.{k}" for cls in config._methods().values() for k in signature_params(cls)]
    return sorted({*keys, "method.name", "seed", "name", "run_dir", *config._sections()})


KNOWN_KEYS = _known_keys()
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, -1, 1, 2]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["auto", "gpu", "cuda", "64-foo", "bf16-mixed", "dino", "mae", "", "x=y"]),
    st.text(max_size=8),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=2),
)
keys = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}", fullmatch=True),
)


def _yaml(value: object) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10**6)
        .strip()
        .removesuffix("...")
        .strip()
    )


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=st.lists(st.tuples(keys, values), min_size=1, max_size=3), as_file=st.booleans())
def test_fuzz_load_recipe_returns_or_raises_config_error(tmp_path, items, as_file):
    """Random keys (known and unknown) x random values: a Recipe or a one-line ConfigError."""
    path = tmp_path / "minimal.yaml"
    path.write_text(MINIMAL)
    overrides = [f"{k}={_yaml(v)}" for k, v in items]
    if as_file:  # the same values set in the recipe file (a later key overwrites an earlier)
        data = yaml.safe_load(MINIMAL)
        for k, v in items:
            node = data
            *parents, last = k.split(".")
            for p in parents:
                if not isinstance(node.get(p), dict):
                    node[p] = {}
                node = node[p]
            node[last] = v
        path.write_text(yaml.safe_dump(data))
        overrides = []
    try:
        load_recipe(path, overrides)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)


# --- run folder and output folder preflight --------------------------------------------------


def test_run_dir_is_created_with_its_folders(tmp_path):
    run = tmp_path / "runs" / "r1"
    check_run_dir(run, 1000)
    assert (run / "checkpoints").is_dir() and (run / "tensorboard").is_dir()
    assert not [p for p in run.rglob("*") if p.is_file()]  # the write probes are gone


def test_run_dir_that_is_a_file(tmp_path):
    run = tmp_path / "run"
    run.write_text("")
    with pytest.raises(PreflightError) as info:
        check_run_dir(run, 1000)
    assert str(info.value) == (
        f"{run}: the run folder is a file, not a folder; remove it or choose another run_dir"
    )


def test_run_dir_under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    run = tmp_path / "file" / "run"
    with pytest.raises(PreflightError, match=f"^{run}: cannot create the run folder .*run_dir$"):
        check_run_dir(run, 1000)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions (simulated below)")
def test_run_dir_in_a_read_only_folder(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(PreflightError, match="cannot create the run folder"):
            check_run_dir(parent / "run", 1000)
    finally:
        parent.chmod(0o700)


def test_run_dir_not_writable_simulated(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()

    def refuse(prefix: str, dir: Path) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(preflight.tempfile, "mkstemp", refuse)
    with pytest.raises(PreflightError) as info:
        check_run_dir(run, 1000)
    assert str(info.value) == (
        f"{run}: the run folder is not writable (Permission denied); fix its permissions or "
        "choose another run_dir"
    )


def test_checkpoints_entry_is_a_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("")
    with pytest.raises(PreflightError) as info:
        check_run_dir(run, 1000)
    assert str(info.value).startswith(
        f"{run / 'checkpoints'}: the run's checkpoints folder is a file"
    )


def test_not_enough_free_space(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: usage._replace(free=100 * 2**20))
    check_run_dir(tmp_path / "ok", 10 * 2**20)  # 2 x 10 MiB + 64 MiB margin fits in 100 MiB
    with pytest.raises(PreflightError) as info:
        check_run_dir(tmp_path / "full", 30 * 2**20)  # 60 + 64 MiB does not
    assert str(info.value) == (
        f"{tmp_path / 'full'}: only 100.0 MiB free on its disk, the run (two checkpoints) needs "
        "about 124.0 MiB; free some space or choose a folder on another disk"
    )


def test_estimate_checkpoint_bytes():
    lin = nn.Linear(10, 5)  # 55 float32 parameters: weights + two AdamW moments
    assert estimate_checkpoint_bytes(lin) == 55 * 4 * 3
    lin.requires_grad_(False)  # frozen (an EMA teacher): stored once
    assert estimate_checkpoint_bytes(lin) == 55 * 4
    bn = nn.BatchNorm1d(4)  # 8 parameters x 3, running mean/var (float32) + a step count (int64)
    assert estimate_checkpoint_bytes(bn) == 8 * 4 * 3 + 8 * 4 + 8


def test_evaluate_out_must_be_writable_before_features(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    out.write_text("")
    called = []
    loader = importlib.import_module("acclimate.export.load")  # the package's `load` hides it
    monkeypatch.setattr(loader, "resolve_model", lambda *a, **k: called.append(1))
    code = main(["evaluate", "test_resnet", "--data", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == ERROR_EXIT and not called  # nothing was computed
    assert err == [
        f"acclimate evaluate: error: {out}: the report folder is a file, not a folder; remove it "
        "or choose another --out"
    ]


@pytest.mark.parametrize(
    ("code", "reason", "fix"),
    [
        (errno.ENOSPC, "No space left on device", "free some disk space or write to another disk"),
        (errno.EACCES, "Permission denied", "fix its permissions or choose another location"),
    ],
)
def test_os_errors_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch, code, reason, fix):
    target = tmp_path / "feats.npy"

    def fail(args: object) -> int:
        raise OSError(code, reason, str(target))

    monkeypatch.setattr("acclimate.cli.embed.run_embed", fail)
    assert main(["embed", "m", "imgs", "--out", str(target)]) == ERROR_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"acclimate embed: error: {target}: {reason}; {fix}"]


# --- user checkpoints --------------------------------------------------------------------------


class Payload:
    """A custom class: pickling it puts code that weights_only refuses into the file."""


def _bad_checkpoint(kind: str, path: Path) -> Path:
    if kind == "truncated":
        torch.save({"state_dict": {"w": torch.ones(64, 64)}, "acclimate": {}}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickled":
        torch.save({"state_dict": {}, "acclimate": {}, "extra": Payload()}, path)
    else:  # a valid torch file that is not an acclimate checkpoint
        torch.save({"foo": 1}, path)
    return path


BAD_KINDS = {
    "truncated": "truncated or corrupt, not a readable torch checkpoint",
    "pickled": "contains pickled Python code (test_trust_config.Payload) and was refused",
    "foreign": "not an acclimate checkpoint (no 'state_dict' and 'acclimate' entries; it holds "
    "foo)",
}


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_load_checkpoint_file_names_the_problem(tmp_path, kind):
    path = _bad_checkpoint(kind, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(path)
    assert str(info.value).startswith(f"{path}: {BAD_KINDS[kind]}")
    assert "\n" not in str(info.value)


def test_load_checkpoint_file_returns_an_acclimate_checkpoint(tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "acclimate": {"mean": [0.5]}}, path)
    obj = load_checkpoint_file(path)
    assert obj["acclimate"] == {"mean": [0.5]} and torch.equal(
        obj["state_dict"]["w"], torch.zeros(2)
    )


@pytest.mark.parametrize("kind", list(BAD_KINDS))
@pytest.mark.parametrize("command", ["export", "evaluate", "embed"])
def test_bad_checkpoint_through_the_cli(tmp_path, capsys, kind, command):
    ckpt = _bad_checkpoint(kind, tmp_path / "bad.ckpt")
    out = tmp_path / "out"
    argv = {
        "export": ["export", str(ckpt), "--out", str(out)],
        "evaluate": ["evaluate", str(ckpt), "--data", str(tmp_path), "--out", str(out)],
        "embed": ["embed", str(ckpt), str(tmp_path), "--out", str(out / "f.npy")],
    }[command]
    assert main(argv) == ERROR_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"acclimate {command}: error: {ckpt}: {BAD_KINDS[kind]}")
    assert not (out / "model.safetensors").exists()


# --- one tiny trained run, shared: resume, export of a diverged run, tampered exports ----------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    data = make_class_folders(root / "images", n_train=4, n_val=2)
    recipe = write_recipe(root, data, "test_resnet")
    run = root / "run"
    argv = [
        "train",
        str(recipe),
        f"run_dir={run}",
        "trainer.max_epochs=1",
        "eval.before_after=false",
        "eval.every_n_epochs=0",
        "eval.pictures=false",
    ]
    assert main(argv) == 0
    export = root / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    return {"run": run, "export": export, "data": data}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_resume_with_a_bad_checkpoint_leaves_the_run_alone(trained, tmp_path, capsys, kind):
    run = _copy(trained["run"], tmp_path / "run")
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    bad = _bad_checkpoint(kind, run / "checkpoints" / "last.ckpt")
    recipe = run / "recipe.yaml"
    before = (recipe.read_bytes(), recipe.stat().st_mtime_ns)
    assert main(["train", "--resume", str(run), "trainer.max_epochs=2"]) == ERROR_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"acclimate train: error: {bad}: {BAD_KINDS[kind]}")
    assert (recipe.read_bytes(), recipe.stat().st_mtime_ns) == before


def test_export_refuses_a_diverged_run(trained, tmp_path, capsys):
    run = _copy(trained["run"], tmp_path / "run")
    ckpt = run / "checkpoints" / "last.ckpt"
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    sd = obj["state_dict"]
    poisoned = [k for k in sd if k.endswith("backbone.conv1.0.weight")]  # student and teacher
    assert len(poisoned) == 2
    for k in poisoned:
        sd[k] = sd[k].contiguous()  # checkpoints may hold channels-last weights
        sd[k].view(-1)[0] = float("inf") if k.startswith("teacher") else float("nan")
    torch.save(obj, ckpt)
    out = tmp_path / "export"
    assert main(["export", str(ckpt), "--out", str(out), "--student"]) == ERROR_EXIT
    assert main(["export", str(ckpt), "--out", str(out)]) == ERROR_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    for line in err:
        assert line.startswith(f"acclimate export: error: checkpoint {ckpt} (")
        assert "hold NaN or inf" in line and "the run diverged, nothing was exported" in line
        assert "optim.lr" in line and "bf16-mixed" in line and "gradient_clip_val" in line
    assert not out.exists()


TAMPERS = {
    "acclimate.json not JSON": (
        lambda d: (d / "acclimate.json").write_text('{"mean": [0.5,'),
        "acclimate.json: not valid JSON (line 1, column",
    ),
    "acclimate.json mean wrong type": (
        lambda d: _edit(d / "acclimate.json", mean="grey"),
        "acclimate.json: mean: expected a list of numbers, got 'grey'",
    ),
    "acclimate.json image_size missing": (
        lambda d: _edit(d / "acclimate.json", image_size=None),
        "acclimate.json: image_size: expected an integer >= 1, got None",
    ),
    "acclimate.json a list": (
        lambda d: (d / "acclimate.json").write_text("[1, 2]"),
        "acclimate.json: expected a JSON object, got list",
    ),
    "config.json not JSON": (
        lambda d: (d / "config.json").write_text("{"),
        "config.json: not valid JSON",
    ),
    "config.json unknown architecture": (
        lambda d: _edit(d / "config.json", architecture="resnet_nonexistent"),
        "config.json: architecture: expected a timm model name, got 'resnet_nonexistent'",
    ),
    "config.json pretrained_cfg wrong type": (
        lambda d: _edit(d / "config.json", pretrained_cfg=[1]),
        "config.json: pretrained_cfg: expected a mapping, got [1]",
    ),
}


def _edit(path: Path, **changes: object) -> None:
    obj = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            obj.pop(k)
        else:
            obj[k] = v
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampered_export_is_one_line_naming_file_and_key(trained, tmp_path, tamper):
    export = _copy(trained["export"], tmp_path / "export")
    change, expected = TAMPERS[tamper]
    change(export)
    with pytest.raises(ExportFileError) as info:
        acclimate.load(export)
    assert str(info.value).startswith(f"{export}/{expected}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("command", ["probe", "evaluate", "embed"])
def test_tampered_export_through_the_cli(trained, tmp_path, capsys, command):
    export = _copy(trained["export"], tmp_path / "export")
    _edit(export / "acclimate.json", std=[0.2, 0.0, 0.2])
    data = str(trained["data"])
    argv = {
        "probe": ["probe", str(export), "--data", data],
        "evaluate": ["evaluate", str(export), "--data", data, "--out", str(tmp_path / "ev")],
        "embed": ["embed", str(export), data, "--out", str(tmp_path / "f.npy")],
    }[command]
    assert main(argv) == ERROR_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"acclimate {command}: error: {export / 'acclimate.json'}: std: every value must be > 0, "
        "got [0.2, 0.0, 0.2]; restore the file or export again"
    ]


def test_tampered_probe_json(trained, tmp_path):
    export = _copy(trained["export"], tmp_path / "export")
    (export / "probes").mkdir(exist_ok=True)
    (export / "probes" / "p.json").write_text("not json")
    with pytest.raises(ExportFileError, match=r"probes/p.json: not valid JSON \(line 1, column 1"):
        acclimate.load(export)


def test_text_posing_as_a_checkpoint_is_not_called_pickled_code(tmp_path):
    from acclimate.preflight import CheckpointError, load_checkpoint_file

    for i, text in enumerate(["MIT License\n\nCopyright (c) 2019\n", "my notes\n" * 20]):
        fake = tmp_path / f"notes{i}.ckpt"
        fake.write_text(text)
        with pytest.raises(
            CheckpointError, match="not a torch checkpoint|truncated or corrupt"
        ) as e:
            load_checkpoint_file(fake)
        assert "pickled" not in str(e.value)


def test_a_run_that_stopped_before_its_first_checkpoint_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: x\n")
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == ERROR_EXIT
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "without any checkpoint" in line and str(run) in line


def test_a_key_under_a_list_override_is_a_config_error(tmp_path):
    """Found by the fuzz test: ``a=[]`` then ``a.b=...`` made omegaconf raise a bare ValueError."""
    path = tmp_path / "minimal.yaml"
    path.write_text(MINIMAL)
    with pytest.raises(ConfigError, match="cannot parse overrides"):
        load_recipe(path, ["____=[]", "____._=null"])
