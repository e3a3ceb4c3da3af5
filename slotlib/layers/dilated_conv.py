"""A dilated depthwise convolution whose CPU backward pass is fast.

``output_stride: 16`` (the default at 64 px for stride-32 backbones, so that a tile gives 4 x 4 tokens)
dilates the last stage's depthwise 3 x 3 convolutions. On CPU, oneDNN's backward of a dilated depthwise
convolution is slow: forward + backward took 22 ms a call for mobilenetv2_100's 960-channel layers at
64 px (a 4 x 4 map), batch 32, on this project's 2-core machine, the forward alone 0.6 ms. With this
class a training step of mobilenetv2_100 + SCOUTER there is about 1.25x faster
(benchmarks/dilated_conv_speed.py, docs/results.md).

:class:`DilatedDepthwiseConv2d` is an ``nn.Conv2d`` with the same parameters and state_dict, whose
backward on CPU computes

* the input gradient as a forward convolution of the output gradient with the spatially flipped kernel
  (for stride 1 that is exactly the transposed convolution), and
* the weight gradient as one depthwise convolution over the B x C input planes, each correlated with
  its output-gradient plane at stride ``dilation`` (k x k values a plane), summed over the batch.

Forward and CUDA/MPS tensors go through ``F.conv2d`` unchanged. :func:`speed_up_dilated_depthwise` swaps
the class of each eligible layer in place (weights, hooks and names untouched).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _DilatedDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, dilation: int):
        ctx.save_for_backward(x, weight)
        ctx.conf = (padding, dilation, bias is not None)
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        padding, dilation, has_bias = ctx.conf
        channels, _, kh, kw = weight.shape
        grad_out = grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # stride 1: the transposed convolution is a convolution with the flipped kernel, padded by
            # dilation * (k - 1) - padding on each side
            pad = dilation * (kh - 1) - padding
            grad_x = F.conv2d(grad_out, weight.flip(2, 3), None, 1, pad, dilation, channels)
        if ctx.needs_input_grad[1]:
            # grad_w[c, i, j] = sum over b, y, x of grad_out[b, c, y, x] * x[b, c, y + i*d - p, x + j*d - p]:
            # for each (b, c) the correlation of its input plane with its output-gradient plane, taken at
            # stride d: one depthwise convolution over B * C planes, then a sum over the batch
            batch, _, h_out, w_out = grad_out.shape
            planes = F.conv2d(x.reshape(1, batch * channels, *x.shape[2:]),
                              grad_out.reshape(batch * channels, 1, h_out, w_out), None, dilation, padding, 1,
                              batch * channels)
            grad_w = planes.view(batch, channels, kh, kw).sum(0).unsqueeze(1).to(weight.dtype)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class DilatedDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (depthwise, stride 1, dilated, symmetric 'same' zero padding) with a fast CPU backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or not torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")
                or not (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x)   # inference, autocast (mixed dtypes in backward) and other devices
        return _DilatedDepthwise.apply(x, self.weight, self.bias, self.padding[0], self.dilation[0])


def eligible(module: nn.Module) -> bool:
    """A plain nn.Conv2d that is depthwise, stride 1, square, dilated, with 'same' symmetric zero padding."""
    if type(module) is not nn.Conv2d:
        return False
    k, d, p = module.kernel_size, module.dilation, module.padding
    return (module.groups == module.in_channels == module.out_channels and module.stride == (1, 1)
            and k[0] == k[1] and d[0] == d[1] > 1 and isinstance(p, tuple) and p[0] == p[1] == d[0] * (k[0] - 1) // 2
            and k[0] % 2 == 1 and module.padding_mode == "zeros")


def speed_up_dilated_depthwise(model: nn.Module) -> int:
    """Turn every eligible layer of ``model`` into a :class:`DilatedDepthwiseConv2d` in place; the count."""
    count = 0
    for module in model.modules():
        if eligible(module):
            module.__class__ = DilatedDepthwiseConv2d
            count += 1
    return count
