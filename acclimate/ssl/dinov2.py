"""DINOv2-style continued pretraining (Oquab et al., "DINOv2: Learning Robust Visual Features
without Supervision", TMLR 2024): DINO on the class token + iBOT on masked patch tokens + KoLeo."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acclimate.backbones.formats import PRETRAINED_MASK_TOKEN
from acclimate.ssl.center import Center
from acclimate.ssl.dino import DINO, forward_by_size
from acclimate.ssl.heads import DINOHead
from acclimate.ssl.losses import IBOTLoss, KoLeoLoss
from acclimate.ssl.masking import block_masks
from acclimate.ssl.optim import OptimSettings, decay_exponents
from acclimate.ssl.sinkhorn import sinkhorn_knopp
from acclimate.ssl.tokens import (
    TOKEN_VIT_HINT,
    MaskToken,
    embed_tokens,
    encode_tokens,
    patch_grid,
    pooled,
    require_token_vit,
    supports_token_masking,
)


def pool_tokens(tokens: Tensor, grid: tuple[int, int], to: tuple[int, int]) -> Tensor:
    """Patch tokens (B, h * w, D) on a ``grid`` (h, w) -> (B, H * W, D) on the grid ``to``,
    by area averaging: a teacher fed upsampled crops gives targets for the student's patches."""
    if tuple(grid) == tuple(to):
        return tokens
    b, _, d = tokens.shape
    maps = tokens.transpose(1, 2).reshape(b, d, *grid)
    return F.adaptive_avg_pool2d(maps, to).flatten(2).transpose(1, 2)


class DINOv2(DINO):
    """DINO's student/teacher (EMA teacher, multi-crop, centring) plus DINOv2's additions.

    The student's global crops are block-masked (``mask_prob`` of them, ratios spread over
    ``mask_ratio``): masked patch embeddings are replaced by a learnable mask token before the
    position embeddings. The iBOT loss asks the student's masked patch tokens to predict the
    teacher's tokens of the unmasked crop; KoLeo spreads the student's class tokens. Register
    tokens (``vit_*_reg4_dinov2``) are prefix tokens and never masked. Start from released
    DINOv2 weights (``backbone.weights``: the official ``.pth`` or timm's); position embeddings
    are kept and resampled to the crop size.

    Args:
        backbone: a timm ViT (``vision_transformer`` / ``deit`` models).
        batch_size, optim: as for every method.
        ibot_weight: weight of the iBOT masked-patch loss (paper: 1.0).
        koleo_weight: weight of the KoLeo regulariser (paper: 0.1; 0 disables it).
        mask_ratio: (min, max) fraction of patches masked in a masked crop (paper: 0.1-0.5).
        mask_prob: fraction of global crops that are masked (paper: 0.5).
        ibot_separate_head: a second head for patch tokens (paper: False, the heads are shared).
        centering: ``centering`` (DINO's running centre) or ``sinkhorn_knopp`` (no state; the
            paper's choice for its largest runs, steadier on small or imbalanced domains).
        sinkhorn_iters: Sinkhorn-Knopp rounds (paper: 3).
        **dino: `DINO`'s arguments (``out_dim`` ... ``freeze_last_layer_epochs``,
            ``teacher_scale``, ``anchor_weight``), for the DINO head on the class token and the
            shared teacher; recipes give them as ``method.KEY`` like the ones above (the recipe
            schema follows ``**dino`` to `DINO`'s signature).
    """

    def __init__(
        self,
        backbone: nn.Module,
        batch_size: int = 64,
        optim: OptimSettings | None = None,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_prob: float = 0.5,
        ibot_separate_head: bool = False,
        centering: Literal["centering", "sinkhorn_knopp"] = "centering",
        sinkhorn_iters: int = 3,
        **dino: Any,
    ) -> None:
        require_token_vit(backbone, "dinov2")
        if not 0 <= mask_ratio[0] <= mask_ratio[1] <= 1:
            raise ValueError(f"mask_ratio must satisfy 0 <= min <= max <= 1, got {mask_ratio}")
        if not 0 <= mask_prob <= 1:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
        if ibot_weight < 0 or koleo_weight < 0:
            raise ValueError("ibot_weight and koleo_weight must be >= 0")
        # saves DINO's arguments and the ones above as hyperparameters
        super().__init__(backbone, batch_size=batch_size, optim=optim, **dino)
        out_dim, student_temp = self.hparams.out_dim, self.hparams.student_temp
        self.mask_token = MaskToken(backbone.embed_dim)
        released = getattr(backbone, PRETRAINED_MASK_TOKEN, None)
        if released is not None:  # the official checkpoint's, kept by `load_weights`
            with torch.no_grad():
                self.mask_token.weight.copy_(released.reshape(1, -1))
        self.ibot_head: DINOHead | None = None
        if ibot_separate_head:
            self.ibot_head = copy.deepcopy(self.head)
            for m in self.ibot_head.mlp.modules():  # its own initialisation
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
            self.teacher_ibot_head = copy.deepcopy(self.ibot_head).requires_grad_(False)
        self.ibot_center = Center(out_dim, self.hparams.center_momentum)
        self.ibot_criterion = IBOTLoss(student_temp)
        self.koleo = KoLeoLoss()

    @classmethod
    def check_backbone(cls, name: str) -> str | None:
        if supports_token_masking(name):
            return None
        return f"dinov2 (iBOT) needs {TOKEN_VIT_HINT}; '{name}' is not one (no patch tokens)"

    def head_modules(self) -> list[nn.Module]:
        return [self.head] + ([self.ibot_head] if self.ibot_head is not None else [])

    def backbone_input_groups(self) -> list[dict]:
        """The mask token trains as the backbone's stem (DINOv2's ``get_vit_lr_decay_rate``
        gives ``mask_token`` layer 0): the backbone's LR multiplier times the deepest layer
        decay, with weight decay, frozen with the backbone during a head warm-up."""
        o = self.optim
        scale = o.backbone_lr_mult
        if o.layer_decay is not None:
            scale *= o.layer_decay ** max(decay_exponents(self.backbone).values(), default=0)
        params = [p for p in self.mask_token.parameters() if p.requires_grad]
        return [{"params": params, "lr_scale": scale, "apply_wd": True}] if params else []

    def _patch_heads(self) -> tuple[nn.Module, nn.Module]:
        if self.ibot_head is None:
            return self.head, self.teacher_head
        return self.ibot_head, self.teacher_ibot_head

    def _targets(self, logits: Tensor, center: Center, temp: float) -> Tensor:
        """Teacher logits (N, K) -> centred, sharpened probabilities (N, K)."""
        if self.hparams.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temp, self.hparams.sinkhorn_iters)
        return torch.softmax((logits.float() - center()) / temp, dim=-1)

    def training_step(self, batch: tuple[dict, Tensor], batch_idx: int) -> Tensor:
        h = self.hparams
        views, _ = batch  # labels, if any, are not used
        globals_, locals_ = list(views["global"]), list(views.get("local", []))
        if any(v.shape != globals_[0].shape for v in globals_):
            raise ValueError("dinov2 needs global crops of one size")
        images = torch.cat(globals_)  # (G * B, C, H, W)
        vit = self.backbone
        n_prefix = vit.num_prefix_tokens
        grid = patch_grid(vit, images.shape[-2:])
        # (G * B, N); the same number of masked crops on every rank
        masks = block_masks(images.shape[0], grid, tuple(h.mask_ratio), h.mask_prob)
        use_ibot = h.ibot_weight > 0 and bool(masks.any())
        masks = masks.to(images.device)
        patch_head, _ = self._patch_heads()

        t_cls, t_patch = self._teacher_outputs(images, masks, grid)
        # The mask token trains during the frozen warm-up too: the masked forward keeps its graph
        # (the backbone parameters, not autograd, are switched off).
        with self.maybe_frozen_params():
            tokens = encode_tokens(vit, embed_tokens(vit, images, masks, self.mask_token()))
            s_global = pooled(vit, tokens)
        feats = [s_global]
        if locals_:
            with self.maybe_frozen():
                feats.append(forward_by_size(vit, locals_))
        s_cls = self.head(torch.cat(feats)).float()

        temp = self.teacher_temperature()
        dino, parts = self._dino_loss(s_cls, t_cls, len(globals_), temp)
        loss = dino
        if use_ibot:
            s_patch = patch_head(tokens[:, n_prefix:][masks]).float()
            ibot = self.ibot_criterion(
                s_patch, self._targets(t_patch, self.ibot_center, temp), masks
            )
            if h.centering == "centering":
                self.ibot_center.accumulate(t_patch)
            loss = loss + h.ibot_weight * ibot
            parts["dinov2/ibot"] = ibot.detach()
        loss = self.with_anchor(loss, images, s_global)
        if h.koleo_weight > 0:
            koleo = sum(self.koleo(c) for c in s_global.chunk(len(globals_)))
            loss = loss + h.koleo_weight * koleo
            parts["dinov2/koleo"] = koleo.detach()

        parts |= {"dino/teacher_temp": temp, "dino/momentum": self.teacher_momentum()}
        self.log_loss(loss, parts)
        return loss

    def _teacher_outputs(
        self, images: Tensor, masks: Tensor, grid: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """The teacher on the unmasked global crops (upsampled by ``teacher_scale``):
        images (G * B, C, H, W), masks (G * B, N) on the student's ``grid`` -> class logits
        (G * B, K) and the logits (M, K) of the patches the student has masked, its patch tokens
        pooled onto the student's grid first."""
        teacher, n_prefix = self.teacher_backbone, self.teacher_backbone.num_prefix_tokens
        _, teacher_patch_head = self._patch_heads()
        with torch.no_grad():
            self.teacher_mode(teacher, self.teacher_head, teacher_patch_head)
            t_images = self.teacher_view(images)
            t_tokens = encode_tokens(teacher, embed_tokens(teacher, t_images))
            t_cls = self.teacher_head(pooled(teacher, t_tokens)).float()
            t_grid = patch_grid(teacher, t_images.shape[-2:])
            t_patches = pool_tokens(t_tokens[:, n_prefix:], t_grid, grid)
            return t_cls, teacher_patch_head(t_patches[masks]).float()

    def _dino_loss(
        self, s_cls: Tensor, t_cls: Tensor, n_global: int, temp: float
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """DINO's loss on the class tokens: s_cls (V * B, K) of every view, t_cls (G * B, K) of
        the global ones; the centre accumulates ``t_cls`` (or Sinkhorn-Knopp replaces it)."""
        h = self.hparams
        n_views = s_cls.shape[0] // (t_cls.shape[0] // n_global)
        students = list(s_cls.chunk(n_views))
        parts: dict[str, Tensor | float] = {}
        if h.centering == "sinkhorn_knopp":  # DINOLoss takes logits: softmax(log p / 1) = p
            t_log = sinkhorn_knopp(t_cls, temp, h.sinkhorn_iters).clamp(min=1e-30).log()
            zero = torch.zeros_like(self.center())
            dino = self.criterion(students, list(t_log.chunk(n_global)), zero, 1.0)
        else:
            teachers = list(t_cls.chunk(n_global))
            dino = self.criterion(students, teachers, self.center(), temp)
            parts = self.collapse_stats(teachers[0], students[0], temp)
            self.center.accumulate(t_cls)
        return dino, {**parts, "dinov2/dino": dino.detach()}

    default_clip_rule = "per_module"  # DINOv2: the backbone's and each head's norm (3.0)

    def clip_groups(self) -> list[list[nn.Parameter]]:
        backbone = [*self.backbone.parameters(), *self.mask_token.parameters()]
        heads = [self.head] + ([self.ibot_head] if self.ibot_head is not None else [])
        return [backbone] + [list(h.parameters()) for h in heads]

    def centers(self) -> list[Center]:
        return [self.center, self.ibot_center]

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        extra = [(self.teacher_ibot_head, self.ibot_head)] if self.ibot_head is not None else []
        return super().ema_pairs() + extra
