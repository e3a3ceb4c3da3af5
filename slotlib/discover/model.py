"""Locatello et al.'s slot-attention autoencoder, sized for a CPU.

A CNN encoder with a soft position embedding, :class:`~slotlib.layers.slot_attention.SlotAttention`
from one shared learned Gaussian (fresh samples every forward pass, so slots are exchangeable), and
a spatial-broadcast decoder that paints every slot separately as RGB plus an alpha logit. The
alphas are normalised by a softmax over slots and the slots composed as
``recon = sum_s mask_s * rgb_s``; the only training signal is the reconstruction MSE.

Shape letters, used in every comment and einsum below:
    B batch, S slots, D slot dim, C channels, H, W image height and width, h, w feature map,
    N tokens (h*w), P pixels (H*W).

References:
    Locatello et al., "Object-Centric Learning with Slot Attention", NeurIPS 2020;
        code google-research/google-research slot_attention/model.py (SoftPositionEmbed,
        SlotAttentionAutoEncoder, spatial_broadcast, unstack_and_split).
    Watters et al., "Spatial Broadcast Decoder", 2019.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..layers.slot_attention import GaussianSlots, SlotAttention

if TYPE_CHECKING:
    from ..config import DiscoveryConfig


def coordinate_grid(h: int, w: int) -> torch.Tensor:
    """[1,h,w,4]: (y, x, 1-y, 1-x) in [0,1], the four ramps SoftPositionEmbed maps to features."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")  # [h,w] each
    return torch.stack([y, x, 1 - y, 1 - x], -1)[None]                                     # [1,h,w,4]


class SoftPositionEmbed(nn.Module):
    """Adds a learned linear map of the coordinate grid to channels-last features."""

    def __init__(self, dim: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Linear(4, dim)
        self.register_buffer("grid", coordinate_grid(*resolution), persistent=False)     # [1,h,w,4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.grid)                                 # [B,h,w,C]


class Encoder(nn.Module):
    """4 convs ``kernel`` x ``kernel`` (the first strided by ``stride``) -> position embedding -> LayerNorm + MLP."""

    def __init__(self, image_size: int, channels: int, dim: int, stride: int, kernel: int = 5) -> None:
        super().__init__()
        c, k, p = channels, kernel, kernel // 2
        self.convs = nn.Sequential(
            nn.Conv2d(3, c, max(k, stride), stride, p), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, k, 1, p), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, k, 1, p), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, k, 1, p), nn.ReLU(inplace=True))
        side = image_size // stride
        self.pos = SoftPositionEmbed(c, (side, side))
        self.mlp = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.convs(image).permute(0, 2, 3, 1)                       # [B,h,w,C] channels last
        x = self.pos(x)                                                 # [B,h,w,C] every token knows where it is
        return self.mlp(x.flatten(1, 2))                                # [B,N,D]


class BroadcastDecoder(nn.Module):
    """Spatial broadcast: each slot tiled on a ``broadcast`` grid, position-embedded, upsampled to RGB + alpha.

    ``log2(paint_size / broadcast)`` stride-2 transposed convs 5x5 reach ``paint_size`` (0: the image
    size), then a 3x3 conv gives 4 channels. A broadcast equal to that size uses plain 5x5 convs
    instead. Below the image size the 4 channels (RGB and the alpha *logits*, so the softmax over
    slots still decides each full-size pixel) are upsampled bilinearly to it: on a CPU the decoder's
    full-size convs are most of a 64 px step (docs/results.md, "Multi-dSprites-style scenes").
    """

    def __init__(self, image_size: int, dim: int, channels: int, broadcast: int, paint_size: int = 0) -> None:
        super().__init__()
        self.broadcast, self.image_size = broadcast, image_size
        paint_size = paint_size or image_size
        self.pos = SoftPositionEmbed(dim, (broadcast, broadcast))
        layers: list[nn.Module] = []
        c_in, side = dim, broadcast
        while side < paint_size:
            layers += [nn.ConvTranspose2d(c_in, channels, 5, 2, 2, output_padding=1), nn.ReLU(inplace=True)]
            c_in, side = channels, side * 2
        if not layers:
            layers += [nn.Conv2d(c_in, channels, 5, 1, 2), nn.ReLU(inplace=True)]
            c_in = channels
        layers += [nn.Conv2d(c_in, channels, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, 4, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, d = slots.shape
        g = self.broadcast
        x = slots.reshape(b * s, 1, 1, d).expand(-1, g, g, -1)          # [B*S,g,g,D] the same vector everywhere
        x = self.pos(x).permute(0, 3, 1, 2)                             # [B*S,D,g,g] position makes it a picture
        out = self.net(x)                                               # [B*S,4,h,w] h = paint_size
        if out.shape[-1] != self.image_size:                            # RGB and alpha logits to full size
            out = nn.functional.interpolate(out, size=self.image_size, mode="bilinear", align_corners=False)
        out = out.view(b, s, 4, *out.shape[-2:])                        # [B,S,4,H,W]
        return out[:, :, :3], out[:, :, 3:]                             # rgb [B,S,3,H,W], alpha [B,S,1,H,W]


def compose(rgb: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha composition: masks = softmax of the alphas over slots; recon = sum over slots of mask * rgb."""
    masks = alpha.softmax(dim=1)                                        # [B,S,1,H,W] over slots: slots compete for pixels
    recon = torch.einsum("bsihw,bschw->bchw", masks, rgb)               # [B,3,H,W]
    return recon, masks


def mixture_log_joint(image: torch.Tensor, rgb: torch.Tensor, masks: torch.Tensor, var: torch.Tensor | float) -> torch.Tensor:
    """log(masks_k) - |x - rgb_k|^2 / (2 var) per slot and pixel [B,S,1,H,W]: the decoder read as a per-pixel
    Gaussian mixture (weights the masks, means the paintings), up to a constant; ``var`` broadcasts to it."""
    dist = (rgb - image[:, None]).square().sum(2, keepdim=True)         # [B,S,1,H,W] squared colour distance
    return masks.clamp_min(1e-12).log() - dist / (2 * var)


@torch.no_grad()
def posterior_masks(image: torch.Tensor, recon: torch.Tensor, rgb: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each pixel's responsibilities under the decoder's mixture: p(slot k | pixel) [B,S,1,H,W].

    The decoder is a mixture per pixel: the masks are the prior over slots and slot k explains the
    pixel's colour x with N(x; rgb_k, sigma^2 I), so p(k | x) is proportional to
    ``masks_k * exp(-|x - rgb_k|^2 / (2 sigma^2))`` (the E-step of Neural EM, Greff et al. 2017).
    sigma^2 is each image's own reconstruction MSE, the maximum-likelihood variance of a Gaussian
    around the composite, so there is nothing to tune. Where a blurred mask straddles an edge, the
    pixel goes to the slot whose colour it has. A readout only: no gradient, training is unchanged.
    """
    var = (recon - image).square().mean((1, 2, 3)).clamp_min(1e-6)     # [B] per image
    logits = mixture_log_joint(image, rgb, masks, var.view(-1, 1, 1, 1, 1))
    return logits.softmax(dim=1)                                        # [B,S,1,H,W] sums to one over slots


@dataclass
class Output:
    """What the autoencoder's forward returns: nothing else, and no side effects."""

    recon: torch.Tensor   # [B,3,H,W]
    rgb: torch.Tensor     # [B,S,3,H,W] each slot's painting
    masks: torch.Tensor   # [B,S,1,H,W] sums to one over slots
    posterior: torch.Tensor  # [B,S,1,H,W] the masks given each pixel's colour (posterior_masks), sums to one
    slots: torch.Tensor   # [B,S,D]
    attn: torch.Tensor    # [B,S,N] slot attention's last iteration, sums to one over slots


class SlotAutoEncoder(nn.Module):
    """Image -> slots -> one RGB + alpha per slot -> reconstruction (Locatello et al., object discovery)."""

    def __init__(self, image_size: int = 32, num_slots: int = 6, slot_dim: int = 64, slot_iters: int = 3,
                 mlp_hidden: int = 128, enc_channels: int = 32, enc_stride: int = 2, dec_channels: int = 16,
                 dec_broadcast: int = 8, enc_kernel: int = 5, slot_init: str = "shared", bilevel: bool = False,
                 eval_iters: int = 0, image_colour: bool = False, dec_size: int = 0) -> None:
        super().__init__()
        self.eval_iters = eval_iters                                    # 0: as many as in training
        self.image_colour = image_colour                                # paintings offset by the image's mean colour
        self.encoder = Encoder(image_size, enc_channels, slot_dim, enc_stride, enc_kernel)
        # Fresh samples every forward pass, in evaluation too: from one shared Gaussian (the paper's
        # exchangeable slots) or from one learned Gaussian per slot (BO-QSA's learned queries, plus noise).
        self.init = GaussianSlots(num_slots, slot_dim, per_slot=slot_init == "per_slot", sample_in_eval=True)
        self.attention = SlotAttention(slot_dim, slot_iters, mlp_hidden, bilevel=bilevel)
        self.decoder = BroadcastDecoder(image_size, slot_dim, dec_channels, dec_broadcast, dec_size)

    @classmethod
    def from_config(cls, cfg: "DiscoveryConfig") -> "SlotAutoEncoder":
        return cls(cfg.image_size, cfg.num_slots, cfg.slot_dim, cfg.slot_iters, cfg.mlp_hidden, cfg.enc_channels,
                   cfg.enc_stride, cfg.dec_channels, cfg.dec_broadcast, cfg.enc_kernel, cfg.slot_init, cfg.bilevel,
                   cfg.eval_iters, image_colour=cfg.dec_colour_init == "image", dec_size=cfg.dec_size)

    @torch.no_grad()
    def start_colour(self, mean: torch.Tensor) -> None:
        """Start every slot's painting at ``mean`` [3] (the training images' mean colour, in [-1,1]).

        The decoder's last conv gives RGB + alpha; its RGB bias is where every painting starts. At zero
        (mid-grey) a black background costs a large error everywhere at first, and the slots settle
        into stripes of the image painting grey blobs before they learn any object's colour
        (docs/results.md, "Object discovery", black backgrounds); starting at the mean avoids that.
        """
        self.decoder.net[-1].bias[:3] = mean.to(self.decoder.net[-1].bias)

    def forward(self, image: torch.Tensor) -> Output:
        """In eval mode slot attention runs ``eval_iters`` iterations (when set), in train mode ``slot_iters``.

        With ``image_colour`` every slot's painting is offset by the input image's mean colour (3 numbers
        per image that bypass the slots): on scenes whose background colour changes from scene to scene
        the slots need not all learn to carry it first, which kept them painting the background alone
        for thousands of steps (docs/results.md, "Multi-dSprites-style scenes").
        """
        tokens = self.encoder(image)                                    # [B,N,D]
        iters = None if self.training else self.eval_iters or None
        slots, attn = self.attention(tokens, self.init(image.shape[0]), iters)  # [B,S,D], [B,S,N]
        rgb, alpha = self.decoder(slots)                                # [B,S,3,H,W], [B,S,1,H,W]
        if self.image_colour:           # the scene's own colour cast comes free; the slots paint what differs
            rgb = rgb + image.mean((2, 3))[:, None, :, None, None]      # + [B,1,3,1,1]
        recon, masks = compose(rgb, alpha)                              # [B,3,H,W], [B,S,1,H,W]
        posterior = posterior_masks(image, recon, rgb, masks)           # [B,S,1,H,W]
        return Output(recon=recon, rgb=rgb, masks=masks, posterior=posterior, slots=slots, attn=attn)


def count_parameters(cfg: "DiscoveryConfig") -> dict[str, int]:
    """Parameter counts of the autoencoder a config builds (no data, no training)."""
    model = SlotAutoEncoder.from_config(cfg)
    parts = {"encoder": model.encoder, "slots": nn.ModuleList([model.init, model.attention]), "decoder": model.decoder}
    counts = {f"n_params_{k}": sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    return {"n_params": sum(p.numel() for p in model.parameters()), **counts}
