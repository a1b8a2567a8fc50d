"""End to end through the real CLI on tiny generated data and tiny timm backbones:
train -> export -> stock timm -> probe -> evaluate -> embed -> stats, resume, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import acclimate
from acclimate.backbones import create_backbone
from acclimate.cli import main
from acclimate.data.transforms import EvalTransform
from acclimate.export.meta import read_export_meta

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
name: tiny
backbone:
  name: {backbone}
  weights: {weights}
data:
  train: {data}
  channels: {channels}
  image_size: 32
  batch_size: 8
  num_workers: 0
augment:
  n_local: 2
  local_size: 16
  preset: satellite
method:
  name: dino
  out_dim: 64
  hidden_dim: 32
  bottleneck_dim: 16
optim:
  freeze_backbone_epochs: 0.5
  warmup_epochs: 0.5
eval:
  batch_size: 16
  num_workers: 0
trainer:
  max_epochs: 2
  progress_bar: false
  log_every_n_steps: 1
"""


def write_recipe(
    tmp_path: Path,
    data: Path,
    backbone: str = "test_resnet",
    channels: int = 3,
    weights: str | None = None,
) -> Path:
    if weights is None:
        model = timm.create_model(backbone, num_classes=0, in_chans=3)
        weights = str(tmp_path / f"{backbone}.safetensors")
        from safetensors.torch import save_file

        save_file(model.state_dict(), weights)
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(backbone=backbone, weights=weights, data=data, channels=channels))
    return path


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
def test_train_export_probe_evaluate(tmp_path, tiny_dataset, backbone, capsys):
    # a corrupt file in the training split is skipped and reported, not fatal
    (tiny_dataset / "train" / "class_0" / "broken.png").write_bytes(b"not a png")
    recipe = write_recipe(tmp_path, tiny_dataset, backbone)
    run = tmp_path / "run"
    assert main(["train", str(recipe), f"run_dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "before -> after: linear probe" in out

    metrics = json.loads((run / "metrics.json").read_text())
    for phase in ("before", "after"):
        assert metrics[phase]["linear_top1"] >= 0.8  # 3 colour classes: chance is 1/3
        assert metrics[phase]["n_test"] == 18
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "recipe.yaml").exists()
    assert any((run / "tensorboard").iterdir())
    assert "broken.png" in (run / "bad_files.txt").read_text()
    assert metrics["bad_files"] == 1
    assert metrics["test_images_seen_in_pretraining"] is False  # trained on train, scored on val

    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    # DINO: the EMA teacher is what ships, and the export and its message say so
    assert read_export_meta(export)["source"].endswith("last.ckpt (EMA teacher)")
    assert f"(EMA teacher) to {export} (pooled features)" in capsys.readouterr().out
    assert read_export_meta(export)["metrics"]["after"] == metrics["after"]
    # other weights than the after-evaluation measured: the student, an earlier epoch
    for other, args in (("student", ["--student"]), ("epoch", [])):
        src = run / "checkpoints" / "epoch000.ckpt" if other == "epoch" else run
        folder = tmp_path / f"export-{other}"
        assert main(["export", str(src), "--out", str(folder), *args]) == 0
        kept = read_export_meta(folder)["metrics"]
        assert "after" not in kept and "delta" not in kept and kept["before"] == metrics["before"]
        want = "the EMA teacher, not the student" if other == "student" else "step "
        assert kept["after_left_out"].startswith(want)
    stock = timm.create_model(f"local-dir:{export}", pretrained=True, num_classes=0).eval()
    ckpt = create_backbone(backbone, weights=str(run / "checkpoints" / "last.ckpt")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(stock(x), ckpt(x))
    cfg = json.loads((export / "config.json").read_text())
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert cfg["pretrained_cfg"]["mean"] == pytest.approx(saved["acclimate"]["mean"])

    assert main(["probe", str(export), "--data", str(tiny_dataset), "--name", "colours"]) == 0
    assert (export / "probes" / "colours.safetensors").exists()
    info = json.loads((export / "probes" / "colours.json").read_text())
    assert info["classes"] == ["class_0", "class_1", "class_2"]
    assert info["protocol"]["knn_k"] == 20 and info["protocol"]["features"] == "pooled"
    assert info["weight_decay"] == info["metrics"]["probe_weight_decay"]  # the one it was fit with
    card = (export / "README.md").read_text()
    assert "kNN top-1 (k=20)" in card and "Protocol: frozen `pooled` features" in card
    ex = acclimate.load(export)
    images = sorted((tiny_dataset / "val" / "class_2").glob("*.png"))[:3]
    names, probs = ex.predict(images)
    assert len(names) == 3 and probs.shape == (3, 3)
    assert torch.allclose(probs.sum(1), torch.ones(3))
    tf = EvalTransform(32, ex.mean, ex.std)
    from acclimate.data.readers import read_image

    direct = stock(torch.stack([tf(read_image(p, 3)) for p in images]))
    assert torch.allclose(ex.features(images), direct, atol=1e-5)

    weights = str(tmp_path / f"{backbone}.safetensors")
    eval_dir = tmp_path / "evaluation"
    args = [
        "evaluate",
        backbone,
        str(export),
        "--weights",
        weights,
        "--data",
        str(tiny_dataset),
        "--image-size",
        "32",
        "--out",
        str(eval_dir),
    ]
    assert main(args) == 0
    result = json.loads((eval_dir / "metrics.json").read_text())
    assert set(result["models"]) == {backbone, str(export)}
    # the start is read and normalised as the export is (training's before measured it so):
    # the same protocol on the same images gives training's own "before" figures
    start = result["models"][backbone]
    assert start["preprocessing"] == result["models"][str(export)]["preprocessing"]
    assert start["description"].endswith(f"preprocessing of {export}")
    for k in ("linear_top1", "knn_top1"):
        assert start[k] == pytest.approx(metrics["before"][k], abs=1e-6)

    emb = tmp_path / "emb.npy"
    assert main(["embed", str(export), str(tiny_dataset / "val"), "--out", str(emb)]) == 0
    assert np.load(emb).shape[0] == 18
    assert len(emb.with_suffix(".files.txt").read_text().splitlines()) == 18


def test_resume_continues_from_last_checkpoint(tmp_path, tiny_dataset):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    run = tmp_path / "run"
    assert main(["train", str(recipe), f"run_dir={run}", "trainer.max_epochs=1"]) == 0
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert main(["train", "--resume", str(run), "trainer.max_epochs=2"]) == 0
    second = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert second["global_step"] == 2 * first["global_step"]
    assert second["epoch"] == first["epoch"] + 1
    # the start's figures are kept while the protocol is the same, measured again when not
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["before_with"]["protocol"]["max_test_images"] == 5000
    assert metrics["before"]["n_test"] == 18
    assert (
        main(["train", "--resume", str(run), "trainer.max_epochs=3", "eval.max_test_images=6"]) == 0
    )
    again = json.loads((run / "metrics.json").read_text())
    assert again["before"]["n_test"] == 6 and again["after"]["n_test"] == 6
    assert again["before_with"]["protocol"]["max_test_images"] == 6
    # refusing to overwrite a finished run
    assert main(["train", str(recipe), f"run_dir={run}"]) == 2


def test_grayscale_source_trains(tmp_path):
    from conftest import make_class_folders

    data = make_class_folders(tmp_path / "gray", n_train=8, n_val=4, channels=1)
    recipe = write_recipe(tmp_path, data, "test_resnet", channels=1)
    run = tmp_path / "run"
    assert main(["train", str(recipe), f"run_dir={run}", "trainer.max_epochs=1"]) == 0
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(saved["acclimate"]["mean"]) == 1


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "method.studnet_temp=0.1",
            "method.studnet_temp: unknown key; did you mean 'student_temp'",
        ),
        ("trainer.max_epochs=ten", "trainer.max_epochs: expected int"),
        ("data.batch_size=0", "data.batch_size: must be >= 1, got 0"),
        ("method.name=dinov9", "unknown method 'dinov9'"),
    ],
)
def test_bad_recipe_is_one_clear_line(tmp_path, tiny_dataset, capsys, override, expected):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    assert main(["train", str(recipe), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert expected in err
    assert "the command line" in err


def test_bad_data_is_one_clear_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    recipe = write_recipe(tmp_path, empty, "test_resnet")
    assert main(["train", str(recipe), f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err

    bad = tmp_path / "bad" / "only"
    bad.mkdir(parents=True)
    for i in range(5):
        (bad / f"{i}.jpg").write_bytes(b"garbage")
    recipe = write_recipe(tmp_path, bad.parent, "test_resnet")
    assert main(["train", str(recipe), f"run_dir={tmp_path / 'run2'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".jpg" in err


def test_stats_command(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "stats.json"
    assert main(["stats", str(tiny_dataset), "--split", "train", "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert len(stats["mean"]) == 3 and stats["n_images"] == 36
    assert "data.mean=" in capsys.readouterr().out


def test_help_lists_commands_and_train_py_runs():
    res = subprocess.run(
        [sys.executable, "-m", "acclimate.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for cmd in ("train", "export", "probe", "evaluate", "embed", "stats"):
        assert cmd in res.stdout
    res = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "no-such-recipe.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 2
    assert res.stderr.strip().endswith("no-such-recipe.yaml: file not found")


def test_bf16_mixed_precision_on_cpu(tmp_path, tiny_dataset):
    recipe = write_recipe(tmp_path, tiny_dataset, "test_vit")
    run = tmp_path / "run"
    args = [
        "train",
        str(recipe),
        f"run_dir={run}",
        "trainer.max_epochs=1",
        "trainer.precision=bf16-mixed",
        "eval.before_after=false",
        "eval.every_n_epochs=0",
    ]
    assert main(args) == 0
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] > 0
    assert all(
        torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point()
    )
    assert not (run / "metrics.json").exists()


def test_lightning_ddp_two_cpu_processes(tmp_path, tiny_dataset):
    """Real Lightning DDP (gloo, 2 CPU processes launched by Lightning) through train.py: the
    frozen warm-up (no backbone gradients) must not stop DDP, and ranks share one run folder."""
    recipe = write_recipe(tmp_path, tiny_dataset, "test_vit")
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        str(recipe),
        f"run_dir={run}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # 36 images, batch 8 per process, 2 processes: 2 steps per epoch, 2 epochs
    assert saved["global_step"] == 4
    assert res.stdout.count("before -> after") == 1
    assert json.loads((run / "metrics.json").read_text())["after"]["n_test"] == 18
