"""``acclimate embed`` (CLS / pooled / patch, .npy / .safetensors) and FAISS search: exact
neighbours, planted duplicates found through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from acclimate.cli import main


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit.safetensors"
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(path))
    return str(path)


def _embed(images: Path, out: Path, weights: str, *extra: str) -> int:
    return main(
        ["embed", "test_vit", str(images), "--weights", weights, "--image-size", "32"]
        + ["--out", str(out), *extra]
    )


def test_embed_kinds_and_formats(tmp_path, tiny_dataset, vit_weights):
    val = tiny_dataset / "val"  # 18 images; test_vit at 32 px: a 2 x 2 grid of 16 px patches
    for kind, shape in (("pooled", (18, 64)), ("cls", (18, 64)), ("patch", (18, 4, 64))):
        out = tmp_path / f"{kind}.npy"
        assert _embed(val, out, vit_weights, "--kind", kind) == 0
        assert np.load(out).shape == shape
        files = out.with_suffix(".files.txt").read_text().splitlines()
        assert len(files) == 18 and all(Path(f).exists() for f in files)
    out = tmp_path / "pooled.safetensors"
    assert _embed(val, out, vit_weights, "--kind", "pooled") == 0
    np.testing.assert_array_equal(
        load_file(str(out))["features"].numpy(), np.load(tmp_path / "pooled.npy")
    )
    # test_vit pools with its CLS token
    np.testing.assert_allclose(np.load(tmp_path / "cls.npy"), np.load(tmp_path / "pooled.npy"))


def test_faiss_index_is_exact():
    faiss = pytest.importorskip("faiss")
    from acclimate.eval.embed import build_index, search

    g = torch.Generator().manual_seed(0)
    gallery, queries = torch.randn(50, 8, generator=g), torch.randn(7, 8, generator=g)
    index = build_index(gallery * torch.rand(50, 1, generator=g))  # norms do not matter
    assert isinstance(index, faiss.IndexFlatIP)
    scores, ids = search(index, queries, k=5)
    cos = (
        torch.nn.functional.normalize(queries, dim=1)
        @ torch.nn.functional.normalize(gallery, dim=1).T
    )
    expected = cos.topk(5, dim=1)
    assert torch.equal(ids, expected.indices)
    torch.testing.assert_close(scores, expected.values, atol=1e-5, rtol=0)


def test_search_finds_planted_duplicates(tmp_path, vit_weights, capsys):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    gallery, queries = tmp_path / "gallery", tmp_path / "queries"
    gallery.mkdir()
    queries.mkdir()
    for i in range(12):
        img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(gallery / f"g{i:02d}.png")
    planted = {"q_a.png": "g03.png", "q_b.png": "g07.png", "q_c.png": "g11.png"}
    for q, g in planted.items():
        shutil.copy(gallery / g, queries / q)

    emb = tmp_path / "emb.npy"
    assert _embed(gallery, emb, vit_weights, "--faiss") == 0
    assert emb.with_suffix(".faiss").exists() and emb.with_suffix(".index.json").exists()
    out = tmp_path / "neighbours.json"
    assert (
        main(["search", str(emb.with_suffix(".faiss")), str(queries), "-k", "3", "--out", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert result["k"] == 3 and len(result["queries"]) == 3
    for q in result["queries"]:
        top = q["neighbours"][0]
        assert Path(top["file"]).name == planted[Path(q["query"]).name]
        assert top["score"] == pytest.approx(1.0, abs=1e-5)
        assert [n["rank"] for n in q["neighbours"]] == [1, 2, 3]
    assert "g03.png (1.000)" in capsys.readouterr().out


def test_faiss_needs_one_vector_per_image(tmp_path, tiny_dataset, vit_weights, capsys):
    out = tmp_path / "patch.npy"
    assert _embed(tiny_dataset / "val", out, vit_weights, "--kind", "patch", "--faiss") == 2
    assert "--kind pooled or cls" in capsys.readouterr().err


def test_embed_leaves_out_unreadable_files(tmp_path, tiny_dataset, vit_weights, caplog):
    import logging

    val = tmp_path / "val"
    shutil.copytree(tiny_dataset / "val", val)
    (val / "class_1" / "0_broken.png").write_bytes(b"not a png")
    out = tmp_path / "emb.npy"
    with caplog.at_level(logging.WARNING):
        assert _embed(val, out, vit_weights) == 0
    files = out.with_suffix(".files.txt").read_text().splitlines()
    assert np.load(out).shape[0] == len(files) == 18
    assert not any("broken" in f for f in files)
    assert "left out 1 unreadable image(s)" in caplog.text
    # each row holds its own file's features
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(files[7], alone / "x.png")
    assert _embed(alone, tmp_path / "alone.npy", vit_weights) == 0
    np.testing.assert_allclose(np.load(tmp_path / "alone.npy")[0], np.load(out)[7], atol=1e-5)
