"""Embeddings on disk and nearest-neighbour search: ``acclimate embed`` writes features
(``.npy`` or ``.safetensors``) plus a file list, optionally a FAISS index (exact inner product
on L2-normalised features = cosine similarity); ``acclimate search`` queries it.

Files written for ``FILE`` (e.g. ``emb.npy``): ``emb.files.txt`` (one image per line, in row
order), and with an index ``emb.faiss`` + ``emb.index.json`` (how the features were made, so
queries are embedded the same way). FAISS needs ``pip install acclimate[faiss]``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from acclimate.fileio import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def files_list_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".files.txt")


def index_path(path: str | Path) -> Path:
    """The FAISS file of features file ``path`` (or ``path`` itself when it is one)."""
    path = Path(path)
    return path if path.suffix == ".faiss" else path.with_suffix(".faiss")


def save_features(path: str | Path, feats: Tensor, files: list[str]) -> Path:
    """Write feats (N, D) or (N, T, D) to ``.safetensors`` (key ``features``) or ``.npy`` (by
    suffix; any other suffix gets ``.npy``) and the file list; returns the features path.

    Rows that are not finite are never written: they (and their files) are left out with a
    WARNING naming each file (``extract_features_indexed`` has normally dropped them already).
    """
    if len(files) != len(feats):
        raise ValueError(f"{len(feats)} feature rows but {len(files)} file names")
    finite = torch.isfinite(feats.reshape(len(feats), -1)).all(1)
    if not bool(finite.all()):
        for f in (f for f, ok in zip(files, finite.tolist(), strict=True) if not ok):
            log.warning("embed: features of %s are not finite (NaN or inf): left out", f)
        feats = feats[finite]
        files = [f for f, ok in zip(files, finite.tolist(), strict=True) if ok]
    path = Path(path)
    if path.suffix != ".safetensors" and path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({"features": feats.contiguous()}, str(path))
    else:
        np.save(path, feats.numpy())
    write_text_atomic(files_list_path(path), "".join(f"{f}\n" for f in files))
    return path


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("FAISS indexes need faiss-cpu: pip install 'acclimate[faiss]'") from e
    return faiss


def _normalised(feats: Tensor) -> np.ndarray:
    if feats.ndim != 2:
        raise ValueError(
            f"an index needs one vector per image (N, D); got {tuple(feats.shape)} "
            "(use --kind pooled or cls)"
        )
    return np.ascontiguousarray(F.normalize(feats.float(), dim=1).numpy(), dtype=np.float32)


def build_index(feats: Tensor) -> Any:
    """Exact (flat) inner-product FAISS index of L2-normalised feats (N, D)."""
    faiss = _faiss()
    x = _normalised(feats)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def write_index(
    features_path: str | Path, feats: Tensor, files: list[str], info: dict[str, Any]
) -> Path:
    """Build and save the index of ``feats`` beside ``features_path``, with ``info`` (model,
    weights, image size, channels, feature kind) in ``.index.json``."""
    faiss = _faiss()
    path = index_path(features_path)
    faiss.write_index(build_index(feats), str(path))
    meta = {
        **info,
        "n": len(files),
        "dim": int(feats.shape[1]),
        "metric": "cosine",
        "features": Path(features_path).name,
        "files": files_list_path(features_path).name,
    }
    write_json_atomic(path.with_suffix(".index.json"), meta)
    return path


def load_index(path: str | Path) -> tuple[Any, list[str], dict[str, Any]]:
    """(FAISS index, file list, index.json) of an index written by :func:`write_index`."""
    faiss = _faiss()
    path = index_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no FAISS index (build one with acclimate embed --faiss)")
    meta = json.loads(path.with_suffix(".index.json").read_text())
    files = (path.parent / meta["files"]).read_text().splitlines()
    return faiss.read_index(str(path)), files, meta


def search(index: Any, queries: Tensor, k: int = 10) -> tuple[Tensor, Tensor]:
    """queries (M, D) -> cosine similarities (M, k) and gallery row ids (M, k), best first."""
    k = min(k, index.ntotal)
    scores, ids = index.search(_normalised(queries), k)
    return torch.from_numpy(scores), torch.from_numpy(ids).long()
