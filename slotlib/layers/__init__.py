"""Building blocks both applications share (as timm/layers is to timm/models).

    slot_attention.py  SlotAttention (Locatello), GaussianSlots
    vit_attention.py   the ViT attention layers timm lacks: spatial suppression, difference similarity,
                       entropy-lambda differential attention (for classify/vit_variants.py)
"""
