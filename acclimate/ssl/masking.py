"""Patch masks for masked-image objectives: BEiT/iBOT block masks and MAE random masks."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def block_mask(
    grid: tuple[int, int],
    n_masked: int,
    min_block: int = 4,
    max_block: int | None = None,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """One block-wise mask with exactly ``n_masked`` patches (Bao et al. 2022, BEiT, Alg. 1).

    Rectangles of random area in [``min_block``, ``max_block``] and random aspect ratio are
    added until the count is reached; a block that would overshoot is skipped, and if no block
    fits after a few tries the remaining patches are drawn at random, so the count is exact.

    Returns:
        (h, w) bool, True = masked.
    """
    h, w = grid
    n = h * w
    if not 0 <= n_masked <= n:
        raise ValueError(f"cannot mask {n_masked} of {n} patches")
    max_block = n_masked if max_block is None else max_block
    mask = torch.zeros(h, w, dtype=torch.bool)
    count, misses = 0, 0
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    while count < n_masked and misses < 10:
        room = min(n_masked - count, max_block)
        area = uniform(min(min_block, room), room)
        ratio = math.exp(uniform(log_lo, log_hi))
        bh = int(round(math.sqrt(area * ratio)))
        bw = int(round(math.sqrt(area / ratio)))
        if not (0 < bh <= h and 0 < bw <= w):
            misses += 1
            continue
        top = int(torch.randint(h - bh + 1, (), generator=generator))
        left = int(torch.randint(w - bw + 1, (), generator=generator))
        new = bh * bw - int(mask[top : top + bh, left : left + bw].sum())
        if 0 < new <= room:
            mask[top : top + bh, left : left + bw] = True
            count, misses = count + new, 0
        else:
            misses += 1
    if count < n_masked:  # top up with random patches
        free = (~mask).flatten().nonzero().squeeze(1)
        pick = free[torch.randperm(len(free), generator=generator)[: n_masked - count]]
        mask.view(-1)[pick] = True
    return mask


def block_masks(
    n_images: int,
    grid: tuple[int, int],
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    mask_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Masks for a batch of student global crops, as in DINOv2's collate (Oquab et al. 2023).

    ``int(n_images * mask_prob)`` images get a block mask, the others none. The masked images'
    ratios are stratified over ``mask_ratio``: the i-th of M is drawn uniformly from the i-th of
    M equal sub-ranges, so every batch spans the range; a masked image has
    ``max(int(N * ratio), 1)`` masked patches. Which images are masked is random.

    Returns:
        (n_images, h * w) bool, True = masked.
    """
    lo, hi = mask_ratio
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"mask_ratio must satisfy 0 <= min <= max <= 1, got {[lo, hi]}")
    if not 0 <= mask_prob <= 1:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    n = grid[0] * grid[1]
    n_masked_images = int(n_images * mask_prob)
    masks = torch.zeros(n_images, n, dtype=torch.bool)
    edges = torch.linspace(lo, hi, n_masked_images + 1).tolist()
    order = torch.randperm(n_images, generator=generator)
    for i in range(n_masked_images):
        u = torch.rand((), generator=generator).item()
        ratio = edges[i] + (edges[i + 1] - edges[i]) * u
        n_masked = max(int(n * ratio), 1)  # a masked crop has at least one masked patch
        masks[order[i]] = block_mask(
            grid, n_masked, max_block=max(n // 2, 1), generator=generator
        ).flatten()
    return masks


def random_masking(
    n_images: int, n_patches: int, mask_ratio: float, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """MAE's per-image random masking (He et al. 2022): keep ``round(N * (1 - ratio))`` patches.

    Returns:
        keep: (B, N_keep) indices of the visible patches, in random order.
        mask: (B, N) bool, True = masked (removed from the encoder's input).
    """
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = max(int(round(n_patches * (1 - mask_ratio))), 1)
    order = torch.rand(n_images, n_patches, device=device).argsort(dim=1)
    keep = order[:, :n_keep]
    mask = torch.ones(n_images, n_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, keep, False)
    return keep, mask
