"""The model card (``README.md``) of an export folder, rendered from ``acclimate.json``, the
resolved recipe and the probes; re-rendered whenever one of them changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from acclimate.eval.multilayer import describe, timm_code
from acclimate.eval.protocol import Protocol
from acclimate.export.meta import ExportFileError, read_export_meta, read_json
from acclimate.fileio import write_text_atomic


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _row(r: Any, key: str) -> Any:
    return r.get(key, "") if isinstance(r, dict) else ""


def _read_recipe(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        recipe = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # yaml and omegaconf raise their own error types
        raise ExportFileError(f"{path}: not a readable recipe ({type(e).__name__})") from None
    return recipe if isinstance(recipe, dict) else {}


def _header_lines(meta: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    lines = [f"# {meta['architecture']} adapted with acclimate", ""]
    if recipe:
        b, d, m = recipe.get("backbone", {}), recipe.get("data", {}), recipe.get("method", {})
        lines += [
            f"- Starting backbone: `{b.get('name')}` with weights `{b.get('weights')}`",
            f"- Method: {m.get('name')}; training data: `{d.get('train')}`",
        ]
    return lines + [
        f"- Input: {meta['channels']} channel(s), {meta['image_size']} px; {meta['preprocessing']}",
        f"- mean {meta['mean']}, std {meta['std']}",
        *([f"- Bands, in input order: {', '.join(meta['bands'])}"] if meta.get("bands") else []),
        "",
    ]


def _protocol(record: Any, kind: str) -> Protocol | None:
    """The protocol a section's figures were measured with (None: a record that is no
    protocol, e.g. a hand-edited recipe)."""
    try:
        return Protocol.from_record(
            {**(record if isinstance(record, dict) else {}), "features": kind}
        )
    except (TypeError, ValueError):
        return None


def _protocol_lines(protocol: Protocol | None) -> list[str]:
    return [f"Protocol: {protocol.describe()}.", ""] if protocol is not None else []


def _before_after_lines(m: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    kind = _row(m["after"], "features") or "pooled"  # runs before feature kinds: pooled
    protocol = _protocol(recipe.get("eval"), kind)  # training measured with its recipe's eval:
    k = f" (k={protocol.knn_k})" if protocol is not None else ""
    return [
        f"## Before / after adaptation (frozen `{kind}` features, same protocol)",
        "",
        *_protocol_lines(protocol),
        f"| model | linear probe top-1 | kNN top-1{k} | test images |",
        "|---|---|---|---|",
        *(
            f"| {label} | {_fmt(_row(r, 'linear_top1'))} | {_fmt(_row(r, 'knn_top1'))} | "
            f"{_row(r, 'n_test')} |"
            for label, r in (("starting backbone", m["before"]), ("adapted", m["after"]))
        ),
        "",
    ]


def _evaluation_lines(ev: dict[str, Any]) -> list[str]:
    """The headline numbers stored by ``acclimate evaluate`` (first model = reference)."""
    models: dict[str, dict[str, float]] = ev["models"]
    keys = list(dict.fromkeys(k for h in models.values() for k in h))
    this = ev.get("this")
    kind = ev.get("features", "pooled")
    protocol = _protocol(ev["protocol"], kind) if isinstance(ev.get("protocol"), dict) else None
    return [
        f"## Evaluation report (frozen `{kind}` features, same protocol for every model)",
        "",
        *_protocol_lines(protocol),
        f"Data: `{ev.get('data')}`"
        + (
            f"; source-domain forgetting check: `{ev['forgetting_data']}`"
            if ev.get("forgetting_data")
            else ""
        )
        + f". Full report: `{ev.get('report')}`.",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        *(
            f"| {'**this export**' if spec == this else f'`{spec}`'} | "
            + " | ".join(_fmt(h.get(k, "")) for k in keys)
            + " |"
            for spec, h in models.items()
        ),
        "",
    ]


def _onnx_lines(onnx: dict[str, Any]) -> list[str]:
    return [
        "## ONNX",
        "",
        f"`{onnx['file']}`: input `{onnx['input']}` float32 {onnx['input_shape']} (dynamic batch), "
        f"already preprocessed as above (resize, centre crop, [0, 1], mean/std); output "
        f"`{onnx['output']}` {onnx['output_shape']}, the `{onnx.get('feature', 'pooled')}` "
        f"features. Max abs difference to PyTorch: {onnx.get('max_abs_diff', 'not checked')}.",
        "",
    ]


def _probe_lines(probes: list[Path]) -> list[str]:
    lines = [
        "## Linear probes",
        "",
        "| probe | classes | features | test top-1 | data |",
        "|---|---|---|---|---|",
    ]
    for p in probes:
        info = read_json(p)
        lines.append(
            f"| {p.stem} | {len(info.get('classes', []))} | `{info.get('feature', 'pooled')}` | "
            f"{_fmt(info.get('metrics', {}).get('linear_top1'))} | `{info.get('data')}` |"
        )
    return lines + [""]


def _feature_lines(meta: dict[str, Any], probe_kinds: list[str]) -> list[str]:
    """Which features probes and evaluation use, and how to compute them with plain timm."""
    default = meta.get("features", "pooled")
    class_token = bool(meta.get("class_token"))
    dim = f" ({meta['feature_dim']} values per image)" if meta.get("feature_dim") else ""
    lines = [
        "## Features",
        "",
        f"Probes, evaluation, `acclimate.load` and ONNX use `{default}` features by default{dim}: "
        f"{describe(default, class_token)}. With plain timm, `model` as in Use below and `x` a "
        "preprocessed batch (B, C, H, W):",
        "",
    ]
    for kind in dict.fromkeys([default, *probe_kinds]):
        lines += [f"`{kind}`:", "", "```python", timm_code(kind, class_token), "```", ""]
    return lines


def _use_lines(name: str) -> list[str]:
    return [
        "## Use",
        "",
        "```python",
        "import timm  # no acclimate needed",
        f'model = timm.create_model("local-dir:{name}", pretrained=True, num_classes=0)',
        "",
        "import acclimate  # preprocessing, features of any kind and probe predictions",
        f'extractor = acclimate.load("{name}")',
        "```",
        "",
    ]


def write_model_card(out: str | Path) -> Path:
    """(Re)write ``README.md`` from ``acclimate.json``, the recipe and the probes."""
    out = Path(out)
    meta = read_export_meta(out)
    recipe = _read_recipe(out / "recipe.yaml")
    lines = _header_lines(meta, recipe)
    m = meta.get("metrics") or {}
    if m.get("before") and m.get("after"):
        lines += _before_after_lines(m, recipe)
    elif m.get("after_left_out"):
        lines += [
            "## Before / after adaptation",
            "",
            f"Not for these weights: the run's after-evaluation measured {m['after_left_out']}. "
            "Measure this export with `acclimate evaluate`.",
            "",
        ]
    if isinstance((meta.get("evaluation") or {}).get("models"), dict):
        lines += _evaluation_lines(meta["evaluation"])
    if meta.get("onnx"):
        lines += _onnx_lines(meta["onnx"])
    probes = sorted((out / "probes").glob("*.json")) if (out / "probes").exists() else []
    if probes:
        lines += _probe_lines(probes)
    kinds = [str(read_json(p).get("feature", "pooled")) for p in probes]
    lines += _feature_lines(meta, kinds) + _use_lines(out.name)
    write_text_atomic(out / "README.md", "\n".join(lines))
    return out / "README.md"
