"""Per-channel pixel statistics of a source, for normalisation (``mean``/``std`` in a recipe)."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from acclimate.data.readers import DataError, describe_error
from acclimate.data.sources import ImageSource

log = logging.getLogger(__name__)


def channel_stats(
    source: ImageSource, max_images: int = 10_000, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of pixel values scaled to [0, 1].

    Streams over a random sample of at most ``max_images`` images (all of them if fewer), so
    memory does not grow with the sample and images may differ in size. Sums of values and of
    squares are kept as exact integers over the uint8 pixels, so the result matches numpy's
    ``mean``/``std`` over the same pixels to float64 rounding. Unreadable files are skipped.
    """
    n = len(source)
    if n == 0:
        raise DataError(f"{source.name} holds no images: nothing to compute statistics from")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n, size=min(max(max_images, 1), n), replace=False))
    sums = [0] * source.channels
    squares = [0] * source.channels
    pixels = 0
    skipped = 0
    for i in picked.tolist():
        try:
            image = source.load(i)
        except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, ...
            log.warning(
                "channel_stats: skipping unreadable image %s (%s)",
                source.describe(i),
                describe_error(exc),
            )
            skipped += 1
            continue
        values = image.reshape(image.shape[0], -1).to(torch.int64)
        for c, (s, q) in enumerate(
            zip(values.sum(1).tolist(), (values * values).sum(1).tolist(), strict=True)
        ):
            sums[c] += s
            squares[c] += q
        pixels += values.shape[1]
    if pixels == 0:
        raise DataError(f"{source.name}: none of the {len(picked)} sampled images is readable")
    # Population variance times pixels^2, exact in Python integers: n*sum(x^2) - sum(x)^2.
    mean = [s / (pixels * 255) for s in sums]
    std = [
        math.sqrt(pixels * q - s * s) / (pixels * 255) for s, q in zip(sums, squares, strict=True)
    ]
    log.info(
        "channel_stats over %d images of %s (%d unreadable): mean %s, std %s",
        len(picked) - skipped,
        source.name,
        skipped,
        [round(m, 4) for m in mean],
        [round(s, 4) for s in std],
    )
    return mean, std
