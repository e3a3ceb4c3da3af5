"""The clear-vit attention variants as timm models: ``backbone: slotvit_<size>_p8_<variant>`` in any params file.

Every variant is one ViT shape with one change to its attention or position encoding, built by timm's own
classes (``VisionTransformer`` with an ``attn_layer``; ``Eva`` for the RoPE variants) and registered with
timm, so ``timm.create_model(name, features_only=True)`` gives its patch tokens as an ``[B,C,H,W]`` map
(timm's ``FeatureGetterNet`` over ``forward_intermediates``; the blocks after the level read and the final
norm are pruned) and parameter counts, ``slotlib describe`` and the heads work as for any backbone.

Shared by all: patch 8, a class token that takes no position embedding (clear-vit adds it after the
embedding), pre-norm blocks with LayerNorm, MLP ratio 4, qkv bias, timm's ViT init with the per-depth
rescaling of the output projections (``fix_init``, as Eva does), no stochastic depth unless
``drop_path`` is set, ImageNet mean/std for the input. Trained from scratch: there are no weights.

Variants (``VARIANTS``):
    baseline              learned absolute position embedding
    pe_dropout            the baseline with dropout 0.1 on the tokens right after the position embedding
                          (timm's ``pos_drop_rate``)
    rope_mixed            no absolute embedding; RoPE-Mixed (learned per-head 2-D frequencies, Heo et al.,
                          ECCV 2024), timm's Eva ``rope_type='mixed'`` with temperature 10, as timm's
                          ``vit_*_rope_mixed_*`` models and clear-vit
    rope_mixed_ape        rope_mixed plus the learned absolute embedding
    diff_entropy          differential attention with lambda = the normalised entropy of each query's
                          second attention map (``slotlib.layers.vit_attention.EntropyDiffAttention``)
    spatial_suppression   scores minus a learned per-head kernel over each query's 2-D neighbours
                          (``SpatialSuppressionAttention``)
    diff_similarity       scores from centre-surround differences of queries and keys on the grid
                          (``DifferenceSimilarityAttention``)

Sizes (``SIZES``): ``tiny`` is clear-vit's shape (dim 192, depth 12, 3 heads; ViT-Ti); ``micro`` (dim 96,
depth 6, 3 heads) trains on a 2-core CPU. At 64 px, patch 8 gives an 8 x 8 token map.

References:
    clear-vit: https://github.com/4adex/clear-vit
    Heo et al., "Rotary Position Embedding for Vision Transformer", ECCV 2024 (naver-ai/rope-vit).
    timm: VisionTransformer, Eva, DiffAttention, FeatureGetterNet.
"""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer

from ..config import SLOTVIT_PREFIX
from ..layers.vit_attention import (
    DifferenceSimilarityAttention,
    EntropyDiffAttention,
    SpatialSuppressionAttention,
    set_token_grid,
)

PATCH = 8
DEFAULT_IMAGE_SIZE = 64

SIZES: dict[str, dict] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),    # clear-vit / ViT-Ti
    "micro": dict(embed_dim=96, depth=6, num_heads=3),     # for this project's 2-core CPU
}

# variant -> (model class, keyword arguments on top of the shared ones)
VARIANTS: dict[str, tuple[type, dict]] = {
    "baseline": (VisionTransformer, {}),
    "pe_dropout": (VisionTransformer, dict(pos_drop_rate=0.1)),
    "rope_mixed": (Eva, dict(use_abs_pos_emb=False, use_rot_pos_emb=True, rope_type="mixed", attn_type="rope",
                             rope_temperature=10.0, rope_grid_indexing="xy")),
    "rope_mixed_ape": (Eva, dict(use_abs_pos_emb=True, use_rot_pos_emb=True, rope_type="mixed", attn_type="rope",
                                 rope_temperature=10.0, rope_grid_indexing="xy")),
    "diff_entropy": (VisionTransformer, dict(attn_layer=EntropyDiffAttention)),
    "spatial_suppression": (VisionTransformer, dict(attn_layer=SpatialSuppressionAttention)),
    "diff_similarity": (VisionTransformer, dict(attn_layer=DifferenceSimilarityAttention)),
}

_SHARED = dict(patch_size=PATCH, img_size=DEFAULT_IMAGE_SIZE, mlp_ratio=4.0, qkv_bias=True, class_token=True,
               no_embed_class=True, global_pool="token")
_VIT_ONLY = dict(fix_init=True)


def model_name(size: str, variant: str) -> str:
    return f"{SLOTVIT_PREFIX}{size}_p{PATCH}_{variant}"


def is_slotvit(name: str) -> bool:
    """Whether ``name`` (with or without a pretrained tag) is one of these models."""
    return name.split(".")[0].startswith(SLOTVIT_PREFIX)


def names() -> list[str]:
    return [model_name(s, v) for s in SIZES for v in VARIANTS]


def _create(variant_name: str, cls: type, kwargs: dict, pretrained: bool, **overrides):
    args = {**_SHARED, **(_VIT_ONLY if cls is VisionTransformer else {}), **kwargs, **overrides}
    out_indices = args.pop("out_indices", 3)
    model = build_model_with_cfg(cls, variant_name, pretrained,
                                 feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **args)
    inner = getattr(model, "model", model)   # FeatureGetterNet wraps the model when features_only
    set_token_grid(inner, inner.patch_embed.grid_size, inner.num_prefix_tokens)
    return model


def _cfg(**kwargs) -> dict:
    return {"url": "", "num_classes": 1000, "input_size": (3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE),
            "pool_size": None, "crop_pct": 1.0, "interpolation": "bilinear", "fixed_input_size": True,
            "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.proj",
            "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({model_name(s, v): _cfg() for s in SIZES for v in VARIANTS})


def _entry(name: str, cls: type, kwargs: dict):
    """timm's entry point for one model: ``fn(pretrained=False, **overrides)``, registered under ``name``."""
    def entry(pretrained: bool = False, **overrides):
        return _create(name, cls, kwargs, pretrained, **overrides)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    return entry


def _register() -> None:
    for size, shape in SIZES.items():
        for variant, (cls, kwargs) in VARIANTS.items():
            entry = _entry(model_name(size, variant), cls, {**shape, **kwargs})
            entry.__doc__ = f"slotlib ViT ({size}, patch {PATCH}): {variant}"
            register_model(entry)


_register()
