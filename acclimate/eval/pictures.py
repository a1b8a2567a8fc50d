"""Pictures of what the backbone sees, logged to TensorBoard during training.

- ViTs: the CLS token's attention over the patches in the last block, per head, for a few fixed
  validation images (the DINO figure, Caron et al. 2021, fig. 1), and the first three principal
  components of the patch features shown as RGB (the DINOv2 figure, Oquab et al. 2023, fig. 1).
- CNNs: the same RGB picture of the final feature map.
- Every backbone: the embedding projector (pooled features, class names, thumbnails) of a
  labelled sample. The kNN accuracy curve is ``knn/top1`` of :class:`KNNMonitor`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acclimate.data.datamodule import eval_loader
from acclimate.data.sources import ImageSource
from acclimate.eval.features import features_of, n_prefix_tokens
from acclimate.eval.pca import pca_project

log = logging.getLogger(__name__)


def has_cls_attention(model: nn.Module) -> bool:
    """A timm ViT with a CLS token whose last block has a fused ``qkv`` projection."""
    blocks = getattr(model, "blocks", None)
    return (
        blocks is not None
        and len(blocks) > 0
        and hasattr(getattr(blocks[-1], "attn", None), "qkv")
        and getattr(model, "cls_token", None) is not None
    )


def _grid(model: nn.Module, images: Tensor) -> tuple[int, int]:
    ph, pw = model.patch_embed.patch_size
    return images.shape[-2] // ph, images.shape[-1] // pw


@torch.no_grad()
def cls_attention(model: nn.Module, images: Tensor) -> Tensor:
    """Attention of the CLS token to the patch tokens in the last block.

    images: (B, C, H, W) normalised. Returns (B, heads, h, w) with h = H / patch, w = W / patch;
    each head's weights over the patches (registers and CLS left out, so rows sum to at most 1).

    timm's Attention calls fused SDPA and returns no weights, so they are recomputed here from
    the block's own ``qkv`` projection of its (normed) input: softmax(q_cls k^T * scale).
    """
    if not has_cls_attention(model):
        raise ValueError("CLS attention maps need a timm ViT with a class token")
    attn = model.blocks[-1].attn
    captured: list[Tensor] = []
    handle = attn.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model.forward_features(images)
    finally:
        handle.remove()
    x = captured[-1]  # (B, N, dim): norm1 of the last block's input
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, N, head_dim)
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(-1)[:, :, 0]
    patches = weights[:, :, n_prefix_tokens(model) :]
    h, w = _grid(model, images)
    if patches.shape[-1] != h * w:
        raise ValueError(f"{patches.shape[-1]} patch tokens do not form a {h} x {w} grid")
    return patches.reshape(b, -1, h, w)


@torch.no_grad()
def patch_pca_rgb(model: nn.Module, images: Tensor) -> Tensor:
    """First three principal components of the patch features as RGB, (B, 3, h, w) in [0, 1].

    One PCA over the patches of all images (so colours mean the same across the batch), each
    component min-max scaled. images: (B, C, H, W) normalised; h, w is the token grid (ViT) or
    the final feature map (CNN).
    """
    tokens = features_of(model, images, "patch").float()  # (B, N, D)
    b, n, d = tokens.shape
    if hasattr(model, "patch_embed"):
        h, w = _grid(model, images)
    else:
        fmap = model.forward_features(images)
        h, w = fmap.shape[-2:]
    if n != h * w:
        raise ValueError(f"{n} patch features do not form a {h} x {w} grid")
    rgb = pca_project(tokens.reshape(b * n, d), 3)
    lo, hi = rgb.min(0).values, rgb.max(0).values
    rgb = (rgb - lo) / (hi - lo).clamp_min(1e-8)
    return rgb.reshape(b, h, w, 3).permute(0, 3, 1, 2).contiguous()


def denormalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, C, H, W) normalised -> (B, 3, H, W) in [0, 1] (grayscale repeated, > 3 channels: the
    first three)."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device)[None, :, None, None]
    s = torch.tensor(std, dtype=images.dtype, device=images.device)[None, :, None, None]
    x = (images * s + m).clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(maps.float(), size=size, mode="nearest")


def _tile(rows: list[list[Tensor]]) -> Tensor:
    """rows of (3, H, W) pictures -> one (3, rows * H, cols * W) image."""
    return torch.cat([torch.cat(r, dim=2) for r in rows], dim=1)


@torch.no_grad()
def picture_panels(
    model: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float]
) -> dict[str, Tensor]:
    """The TensorBoard images for a batch (B, C, H, W) of normalised inputs, each (3, *, *).

    ``overview``: one row per image, (3, B * H, k * W): the input, then for ViTs the mean CLS
    attention over heads (scaled to [0, 1]), then the PCA of patch features as RGB, all at the
    input resolution. ``attention_heads`` (ViTs): one row per image, one column per head,
    (3, B * H, heads * W).
    """
    size = (images.shape[-2], images.shape[-1])
    inputs = denormalise(images.float(), mean, std).cpu()
    columns = [inputs]
    out: dict[str, Tensor] = {}
    if has_cls_attention(model):
        att = cls_attention(model, images).float().cpu()  # (B, heads, h, w)
        scaled = att / att.flatten(2).amax(-1)[..., None, None].clamp_min(1e-8)
        columns.append(_upsample(scaled.mean(1, keepdim=True), size).expand(-1, 3, -1, -1))
        heads = _upsample(scaled, size)  # (B, heads, H, W)
        out["attention_heads"] = _tile(
            [
                [heads[i, j][None].expand(3, -1, -1) for j in range(heads.shape[1])]
                for i in range(len(heads))
            ]
        )
    columns.append(_upsample(patch_pca_rgb(model, images).cpu(), size))
    out["overview"] = _tile([[c[i] for c in columns] for i in range(len(images))])
    return out


class PictureMonitor(pl.Callback):
    """Logs :func:`picture_panels` of ``n_pictures`` fixed images of ``source`` and the
    embedding projector of up to ``projector_images`` of its labelled images, before training
    and every ``every_n_epochs`` epochs, to the TensorBoard logger. Global rank 0 only.

    Images are spread evenly over the source (sorted by class in folder sources), so the same
    images appear at every step.
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[Any], Any],
        mean: Sequence[float],
        std: Sequence[float],
        n_pictures: int = 4,
        projector_images: int = 256,
        every_n_epochs: int = 1,
        batch_size: int = 64,
    ) -> None:
        self.mean, self.std = list(mean), list(std)
        self.transform = transform
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.images = self._fixed(source, n_pictures)
        self.projector = source.subset(self._spread(len(source), projector_images))

    @staticmethod
    def _spread(n: int, k: int) -> list[int]:
        return sorted(set(np.linspace(0, n - 1, num=min(k, n)).round().astype(int).tolist()))

    def _fixed(self, source: ImageSource, k: int) -> Tensor | None:
        if k <= 0 or len(source) == 0:
            return None
        loader = eval_loader(source.subset(self._spread(len(source), k)), self.transform, k, 0)
        batch = next(iter(loader), None)  # None: every picked image was unreadable
        return None if batch is None else batch[0]

    def _writer(self, trainer: pl.Trainer) -> Any:
        from lightning.pytorch.loggers import TensorBoardLogger

        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                return lg.experiment
        return None

    @torch.no_grad()
    def _log(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        writer = self._writer(trainer) if trainer.is_global_zero else None
        if writer is None:
            return
        model = module.export_backbone()
        was_training = model.training
        model.eval()
        step = trainer.global_step
        try:
            if self.images is not None:
                images = self.images.to(module.device)
                for name, picture in picture_panels(model, images, self.mean, self.std).items():
                    writer.add_image(f"pictures/{name}", picture, step)
            self._projector(writer, model, module.device, step)
        finally:
            model.train(was_training)

    def _projector(self, writer: Any, model: nn.Module, device: Any, step: int) -> None:
        if len(self.projector) == 0 or not self.projector.has_labels:
            return
        feats, labels, thumbs = [], [], []
        for images, y, _ in eval_loader(self.projector, self.transform, self.batch_size, 0):
            feats.append(features_of(model, images.to(device), "pooled").float().cpu())
            labels.append(torch.as_tensor(y))
            thumbs.append(F.interpolate(denormalise(images, self.mean, self.std), size=(32, 32)))
        if not feats:  # every image unreadable
            return
        classes = self.projector.classes
        names = [classes[i] if 0 <= i < len(classes) else "?" for i in torch.cat(labels).tolist()]
        writer.add_embedding(
            torch.cat(feats),
            metadata=names,
            label_img=torch.cat(thumbs),
            global_step=step,
            tag="embeddings",
        )

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.global_step == 0:
            self._log(trainer, module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        n = self.every_n_epochs
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        if n and ((trainer.current_epoch + 1) % n == 0 or last):
            self._log(trainer, module)
