#!/usr/bin/env bash
# The demo (the README's first command): adapt ImageNet EfficientNet-Lite0 to the 64 px aerial
# tiles of samples/ucmerced64 (self-distillation from the start's upsampled view, no labels),
# export the adapted extractor, train a probe into it, and print frozen linear-probe and kNN
# accuracy before and after adaptation, and what the start scores fed the tiles at 224 px.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
run=runs/demo-$(date +%Y%m%d-%H%M%S)
.venv/bin/python train.py recipes/demo.yaml run_dir="$run" "$@"
.venv/bin/acclimate export "$run" --out "$run/export"
.venv/bin/acclimate probe "$run/export" --data samples/ucmerced64 --name ucmerced
echo
echo "== before / after adaptation (frozen features, same probe protocol) =="
.venv/bin/python - "$run" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
b, a = m["before"], m["after"]
print(f"linear probe: {b['linear_top1']:.4f} -> {a['linear_top1']:.4f} ({a['linear_top1'] - b['linear_top1']:+.4f})")
print(f"kNN (k=20):   {b['knn_top1']:.4f} -> {a['knn_top1']:.4f} ({a['knn_top1'] - b['knn_top1']:+.4f})")
print(f"on {a['n_test']} held-out UC Merced tiles at 64 px; export folder: {sys.argv[1]}/export")
ref = m.get("start_at_reference_size")
if ref:
    print(f"the start fed the same tiles at {ref['image_size']} px (12x the inference cost): "
          f"linear {ref['linear_top1']:.4f}, kNN {ref['knn_top1']:.4f}")
PY
