"""Augmentation speed on one core: per-sample ops, torchvision v2 versus albumentations
(OpenCV), and the whole multi-crop transform per preset, per sample versus batched.

* ``ops``: the per-sample geometric ops of a view on one image: random resized crop (antialiased
  bilinear in torchvision; albumentations' ``RandomResizedCrop``, OpenCV bilinear, and a bare
  ``cv2.resize`` of the crop for the kernel alone), horizontal flip, 90-degree rotation; on
  uint8 RGB, uint8 13-band and 16-bit 4-band images (torchvision on the float32 tensors the
  readers return for 16-bit files, albumentations on uint16 HWC arrays). Microseconds per call.
* ``multicrop``: ``MultiCropTransform`` (2 global + 6 local views) per preset at 64/32 px (64 px
  inputs) and 224/96 px (256 px inputs), images/s on one core, batches of ``--batch`` collated
  as the loader does: ``per_sample`` (every op on each image, ``augment.device: per_sample``)
  and ``batched`` (crops and flips per image, the photometric ops per batch after collation, as
  ``augment.device: cpu``); "crops only": the per-image stage alone, what stays on the CPU with
  ``augment.device: auto`` on an accelerator; lightly's ``DINOTransform`` (PIL images, not
  collated) when lightly is importable.

    python bench/bench_augment.py                 # about a minute
    PYTHONPATH=/path/to/lightly python bench/bench_augment.py   # with lightly (--no-deps)
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from acclimate.data.transforms import MultiCropTransform  # noqa: E402
from acclimate.data.views import crop_box  # noqa: E402

PRESETS = [  # (preset, channels, dtype of the image as read)
    ("natural", 3, torch.uint8),
    ("satellite", 3, torch.uint8),
    ("satellite", 13, torch.float32),  # Sentinel-2 L1C: 16-bit, read as float32
    ("medical", 1, torch.uint8),
    ("microscopy", 3, torch.uint8),
]
SIZES = [(64, 32, 64), (224, 96, 256)]  # global, local, input side
OPS = ("random resized crop", "cv2.resize of a crop", "horizontal flip", "rot90")


def rate(fn, seconds: float, warm: int = 3) -> float:
    """Calls of ``fn`` per second over at least ``seconds`` (after ``warm`` calls)."""
    for _ in range(warm):
        fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n / elapsed


def _image(channels: int, side: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(channels, side, side, generator=g)
    return (x * 255).to(torch.uint8) if dtype == torch.uint8 else x


# ----------------------------------------------------------------------------- per-sample ops


def _torch_ops(x: torch.Tensor, size: int, scale: tuple[float, float]) -> dict:
    ratio = (3 / 4, 4 / 3)

    def crop() -> torch.Tensor:
        u = torch.rand(40, dtype=torch.float64).tolist()
        box = crop_box(x.shape[-2], x.shape[-1], scale, ratio, u)
        return v2.functional.resized_crop(x, *box, [size, size], antialias=True)

    view = crop()
    return {
        "random resized crop": crop,
        "horizontal flip": lambda: view.flip(-1),
        "rot90": lambda: torch.rot90(view, 1, dims=(-2, -1)),
    }


def _album_ops(a: np.ndarray, size: int, scale: tuple[float, float]) -> dict:
    import albumentations as A
    import cv2

    rrc = A.RandomResizedCrop(size=(size, size), scale=scale, p=1.0)
    flip, rot = A.HorizontalFlip(p=1.0), A.RandomRotate90(p=1.0)
    view = rrc(image=a)["image"]

    def bare() -> np.ndarray:  # OpenCV's kernel alone: a fixed crop of the median area
        side = int(a.shape[0] * ((scale[0] + scale[1]) / 2) ** 0.5)
        return cv2.resize(a[:side, :side], (size, size), interpolation=cv2.INTER_LINEAR)

    return {
        "random resized crop": lambda: rrc(image=a),
        "cv2.resize of a crop": bare,
        "horizontal flip": lambda: flip(image=view),
        "rot90": lambda: rot(image=view),
    }


def bench_ops(seconds: float) -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        print("albumentations / OpenCV not installed: torchvision only")
        cv2 = None
    print("\n## per-sample ops, microseconds per call (1 thread)\n")
    print("| image | view | op | torchvision v2 | albumentations (OpenCV) |")
    print("|---|---|---|---|---|")
    cases = [("uint8 RGB", 3, "uint8"), ("uint8 13-band", 13, "uint8"), ("16-bit 4-band", 4, "u16")]
    for name, c, kind in cases:
        for g, loc, side in SIZES:
            x = _image(c, side, torch.float32, seed=c)
            if kind == "uint8":
                x = (x * 255).to(torch.uint8)
            hwc = x.permute(1, 2, 0).numpy()
            a = (hwc * 65535).astype(np.uint16) if kind == "u16" else np.ascontiguousarray(hwc)
            for view, size, scale in (("global", g, (0.4, 1.0)), ("local", loc, (0.05, 0.4))):
                tv = _torch_ops(x, size, scale)
                al = _album_ops(a, size, scale) if cv2 is not None else {}
                for op in (
                    "random resized crop",
                    "cv2.resize of a crop",
                    "horizontal flip",
                    "rot90",
                ):
                    t_us = f"{1e6 / rate(tv[op], seconds / 4):.0f}" if op in tv else "-"
                    a_us = f"{1e6 / rate(al[op], seconds / 4):.0f}" if op in al else "-"
                    label = f"{side} px -> {view} {size} px"
                    print(f"| {name} | {label} | {op} | {t_us} | {a_us} |", flush=True)


# ----------------------------------------------------------------------------- whole transform


def _transform(preset: str, c: int, g: int, loc: int, device: str) -> MultiCropTransform:
    return MultiCropTransform(
        g, loc, 6, preset=preset, channels=c, mean=[0.5] * c, std=[0.25] * c, device=device
    )


def _per_sample_rate(t: MultiCropTransform, images: list, batch: int, seconds: float) -> float:
    def one_batch() -> None:  # collated too, as the loader does
        default_collate([t(images[i % len(images)]) for i in range(batch)])

    return batch * rate(one_batch, seconds, warm=1)


def _batched_rate(t: MultiCropTransform, images: list, batch: int, seconds: float) -> float:
    def one_batch() -> None:
        t.batch(default_collate([t.sample(images[i % len(images)]) for i in range(batch)]))

    return batch * rate(one_batch, seconds, warm=1)


def _sample_rate(t: MultiCropTransform, images: list, seconds: float) -> float:
    state = {"i": 0}

    def one() -> None:
        t.sample(images[state["i"] % len(images)])
        state["i"] += 1

    return rate(one, seconds)


def _lightly_rate(g: int, loc: int, side: int, seconds: float) -> float | None:
    try:
        from lightly.transforms import DINOTransform
    except ImportError:
        return None
    from PIL import Image

    t = DINOTransform(global_crop_size=g, local_crop_size=loc, n_local_views=6)
    images = [
        Image.fromarray(_image(3, side, torch.uint8, s).permute(1, 2, 0).numpy()) for s in range(8)
    ]
    state = {"i": 0}

    def one() -> None:
        t(images[state["i"] % len(images)])
        state["i"] += 1

    return rate(one, seconds)


def bench_multicrop(seconds: float, batch: int) -> None:
    print(f"\n## multi-crop transform, images/s on 1 core (2 global + 6 local; batch {batch})\n")
    print("| preset | bands | views | per_sample | batched | batched / per_sample | crops only |")
    print("|---|---|---|---|---|---|---|")
    for g, loc, side in SIZES:
        for preset, c, dtype in PRESETS:
            images = [_image(c, side, dtype, s) for s in range(8)]
            per_sample = _transform(preset, c, g, loc, "per_sample")
            per = _per_sample_rate(per_sample, images, batch, seconds)
            batched = _transform(preset, c, g, loc, "cpu")
            bat = _batched_rate(batched, images, batch, seconds)
            crops = _sample_rate(batched, images, seconds)
            kind = "uint8" if dtype == torch.uint8 else "float32"
            print(
                f"| {preset} | {c} {kind} | {g}/{loc} px | {per:.0f} | {bat:.0f} | "
                f"{bat / per:.2f}x | {crops:.0f} |",
                flush=True,
            )
        lightly = _lightly_rate(g, loc, side, seconds)
        text = "not installed" if lightly is None else f"{lightly:.0f}"
        print(f"| lightly DINOTransform (PIL) | 3 uint8 | {g}/{loc} px | {text} | - | - | - |")


def bench_interleaved(batch: int, rounds: int = 8) -> None:
    """acclimate's batched transform against lightly's DINOTransform, batch by batch in turn,
    timed by this thread's CPU time: on a shared machine both see the same load."""
    try:
        from lightly.transforms import DINOTransform
    except ImportError:
        print("\nlightly is not installed: no interleaved comparison")
        return
    import statistics

    from PIL import Image

    print(
        f"\n## natural preset against lightly, interleaved, CPU time of 1 thread (batch {batch})\n"
    )
    print("| views | acclimate batched (images/s) | lightly DINOTransform | ratio |")
    print("|---|---|---|---|")
    for g, loc, side in SIZES:
        images = [_image(3, side, torch.uint8, s) for s in range(8)]
        pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
        ours_t = _transform("natural", 3, g, loc, "cpu")
        theirs_t = DINOTransform(global_crop_size=g, local_crop_size=loc, n_local_views=6)
        ours, theirs = [], []
        for _ in range(rounds):
            start = time.thread_time()
            ours_t.batch(default_collate([ours_t.sample(images[i % 8]) for i in range(batch)]))
            ours.append(batch / (time.thread_time() - start))
            start = time.thread_time()
            for i in range(batch):
                theirs_t(pil[i % 8])
            theirs.append(batch / (time.thread_time() - start))
        a, b = statistics.median(ours[1:]), statistics.median(theirs[1:])
        print(f"| {g}/{loc} px | {a:.0f} | {b:.0f} | {a / b:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (batched)")
    parser.add_argument(
        "--parts", default="ops,multicrop,interleaved", help="ops, multicrop, interleaved"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    parts = args.parts.split(",")
    if "ops" in parts:
        bench_ops(args.seconds)
    if "multicrop" in parts:
        bench_multicrop(args.seconds, args.batch)
    if "interleaved" in parts:
        bench_interleaved(32)


if __name__ == "__main__":
    main()
