"""ViTPose's backbones (Xu et al. 2022): plain vision transformers from timm, patches of 16,
no class token, their tokens laid back out as a feature map of stride 16. ViTPose's classic
decoder is the Simple Baselines head with two deconvolutions (`model.deconv_layers: 2`,
`deconv_filters: 256`), so `vitpose_b` with it is ViTPose-B (89.99 M parameters at 256x192).

The position embedding is sized for 256x192 inputs (16 x 12 patches), as ViTPose trains them;
other input sizes interpolate it (timm's `dynamic_img_size`)."""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pose.models.registry import register_backbone
from pose.models.weights import WeightsError, drop_unused

PATCH = 16
GRID_INPUT = (256, 192)  # the input size the position embedding is laid out for


class ViTBackbone(nn.Module):
    """image (N, 3, H, W) -> features (N, width, H/16, W/16) through timm's ViT."""

    def __init__(self, width: int, depth: int, heads: int, drop_path: float):
        super().__init__()
        self.vit = VisionTransformer(
            img_size=GRID_INPUT,
            patch_size=PATCH,
            num_classes=0,
            global_pool="",
            class_token=False,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            drop_path_rate=drop_path,
            dynamic_img_size=True,
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass
        (`engine.activation_checkpointing`)."""
        self.vit.set_grad_checkpointing(enable)

    @property
    def top_layer(self) -> int:
        """The layer of what follows the blocks (the final norm, the head): depth + 1."""
        return len(self.vit.blocks) + 1

    def layer_of(self, name: str) -> int:
        """The layer of parameter `name` (relative to this module) for layer-wise lr decay,
        as ViTPose counts: the embeddings 0, block i i + 1, the final norm the top layer."""
        name = name.removeprefix("vit.")
        if name.startswith(("pos_embed", "patch_embed", "cls_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.top_layer

    def from_classifier_naming(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm's ViT weights (`timm:vit_base_patch16_224.mae`, or such a file) as ViTPose starts
        from them: the classifier and the class (and register) tokens dropped, the position
        embedding's patch grid resampled to this model's 16 x 12 as ViTPose does (bicubic,
        corners not aligned, no antialiasing)."""
        from timm.layers import resample_abs_pos_embed

        state = dict(state)
        prefix_tokens = 0
        for token in ("cls_token", "reg_token"):
            if token in state:
                prefix_tokens += state.pop(token).shape[1]
        if "pos_embed" in state:
            pos = state["pos_embed"]
            grid = _square_grid(pos.shape[1] - prefix_tokens) or _square_grid(pos.shape[1])
            if grid is None:
                raise WeightsError(
                    f"pos_embed of shape {tuple(pos.shape)} is no square grid of patches"
                )
            pos = pos[:, pos.shape[1] - grid * grid :]  # without the tokens' embeddings
            state["pos_embed"] = resample_abs_pos_embed(
                pos,
                new_size=list(self.vit.patch_embed.grid_size),
                old_size=[grid, grid],
                num_prefix_tokens=0,
                antialias=False,
                align_corners=False,
            )
        state = drop_unused(state, self.vit, ("head.", "fc_norm.", "attn_pool."))
        return {f"vit.{k}": v for k, v in state.items()}

    def check_timm_architecture(self, architecture: str) -> None:
        """timm's weights of `architecture` fit this ViT only with as many attention heads, which
        the weights' shapes cannot tell (a 384-wide ViT-S has 6 heads in timm, 12 in ViTPose)."""
        import timm

        with torch.device("meta"):
            source = timm.create_model(architecture, pretrained=False)
        blocks = getattr(source, "blocks", None)
        heads = blocks[0].attn.num_heads if blocks else None
        ours = self.vit.blocks[0].attn.num_heads
        if heads is not None and heads != ours:
            raise WeightsError(
                f"timm's '{architecture}' has {heads} attention heads, this ViT {ours}: its "
                "weights would load (the shapes agree) but compute something else"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)  # (N, h*w, width), the last norm applied
        n, _, height, width = x.shape
        grid = (height // PATCH, width // PATCH)
        return tokens.transpose(1, 2).reshape(n, -1, *grid)


def _square_grid(tokens: int) -> int | None:
    side = math.isqrt(tokens)
    return side if side * side == tokens else None


# name: (width, depth, heads), ViTPose's S/B/L/H (ViT-S/16, B/16, L/16 and H/16 at patch 16)
SIZES = {
    "vitpose_s": (384, 12, 12),
    "vitpose_b": (768, 12, 12),
    "vitpose_l": (1024, 24, 16),
    "vitpose_h": (1280, 32, 16),
}


for _name, (_width, _depth, _heads) in SIZES.items():
    register_backbone(_name, channels=_width, stride=PATCH, layers=_depth)(
        lambda cfg, w=_width, d=_depth, h=_heads: ViTBackbone(w, d, h, cfg.drop_path)
    )
