"""Building blocks both applications share (as timm/layers is to timm/models).

    slot_attention.py  ScouterSlotAttention (SCOUTER), SlotAttention (Locatello), GaussianSlots
"""
