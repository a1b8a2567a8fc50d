"""Reading an export folder's JSON files (``acclimate.json`` and the probes'), checked: a
hand-edited or truncated file is one line naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from acclimate.errors import AcclimateError
from acclimate.eval.features import kind_problem
from acclimate.run_info import channels_problem, preprocessing_problem

META_FILE = "acclimate.json"


class ExportFileError(AcclimateError):
    """An export folder's (or a run's) JSON file that is unreadable or was altered."""


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; invalid JSON or another top-level type is one line naming
    the file (the usual cause: it was edited by hand)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ExportFileError(f"{path}: not a text file; it must hold JSON") from None
    except json.JSONDecodeError as e:
        raise ExportFileError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); restore it or "
            "export again"
        ) from None
    if not isinstance(obj, dict):
        raise ExportFileError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_export_meta(out: str | Path) -> dict[str, Any]:
    """An export folder's ``acclimate.json``, checked: a hand-edited or truncated file gives one
    line naming the file and the key, not a KeyError later on."""
    path = Path(out) / META_FILE
    meta = read_json(path)
    problem = export_meta_problem(meta)
    if problem:
        raise ExportFileError(f"{path}: {problem}; restore the file or export again")
    return meta


def export_meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the keys of an export's ``acclimate.json``, or None."""
    if not isinstance(meta.get("architecture"), str):
        return f"architecture: expected a timm model name, got {meta.get('architecture')!r}"
    problem = channels_problem(meta) or preprocessing_problem(meta, meta["channels"])
    if problem:
        return problem
    if not isinstance(meta.get("preprocessing"), str):
        return f"preprocessing: expected a description, got {meta.get('preprocessing')!r}"
    for key in ("metrics", "evaluation", "onnx"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"{key}: expected a mapping or null, got {meta[key]!r}"
    if "features" in meta and kind_problem(meta["features"]):  # absent: an older export, pooled
        return f"features: {kind_problem(meta['features'])}"
    return None
