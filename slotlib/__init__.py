"""slotlib: slot-attention image classification (SCOUTER, Locatello) on timm backbones."""

__version__ = "0.1.0"
