"""Shared fixtures: tiny generated image sets (no network, nothing from ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


def make_class_folders(
    root: Path, n_train: int = 12, n_val: int = 6, size: int = 32, channels: int = 3, seed: int = 0
) -> Path:
    """``root/{train,val}/class_k/*.png``: noisy images whose mean colour depends on the class,
    so frozen features separate them and kNN/probe accuracies are meaningful."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, colour in enumerate(COLOURS):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(colour, dtype=np.float32)[None, None, :]
                img = base + rng.normal(0, 40, size=(size, size, 3))
                img = np.clip(img, 0, 255).astype(np.uint8)
                if channels == 1:
                    Image.fromarray(img).convert("L").save(d / f"{i}.png")
                else:
                    Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "images")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread (and leave the other core to data workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Index and statistics caches go to a temporary folder, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ACCLIMATE_CACHE_DIR", str(tmp_path_factory.mktemp("acclimate-cache")))
    yield
    mp.undo()


def stub_trainer(module, accumulate: int = 1):
    """Drive an SSLModule's hooks without Lightning: a stub trainer (10 batches per epoch, 20
    optimisation steps in all, gradient accumulation ``accumulate``), logging switched off."""
    from types import SimpleNamespace

    module._trainer = SimpleNamespace(
        global_step=0,
        num_training_batches=10,
        estimated_stepping_batches=20,
        max_epochs=2,
        accumulate_grad_batches=accumulate,
        world_size=1,
        optimizers=[],
    )
    module.log = module.log_dict = lambda *a, **k: None
    return module
