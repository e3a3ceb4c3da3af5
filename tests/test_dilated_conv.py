"""DilatedDepthwiseConv2d: the same function, gradients and weights as nn.Conv2d, only a faster CPU backward."""

import pytest
import torch
from torch import nn

from slotlib.classify.backbone import create_backbone
from slotlib.config import Config
from slotlib.layers.dilated_conv import DilatedDepthwiseConv2d, eligible, speed_up_dilated_depthwise


def pair(channels=6, k=3, dilation=2, bias=True):
    torch.manual_seed(0)
    ref = nn.Conv2d(channels, channels, k, padding=dilation * (k - 1) // 2, dilation=dilation, groups=channels,
                    bias=bias)
    fast = nn.Conv2d(channels, channels, k, padding=dilation * (k - 1) // 2, dilation=dilation, groups=channels,
                     bias=bias)
    fast.load_state_dict(ref.state_dict())
    assert speed_up_dilated_depthwise(fast) == 1
    return ref, fast


@pytest.mark.parametrize("k,dilation,bias,size", [(3, 2, True, (5, 7)), (3, 4, False, (6, 6)), (5, 2, True, (9, 8)),
                                                  (3, 2, False, (2, 2))])
def test_gradients_equal_nn_conv2d(k, dilation, bias, size):
    ref, fast = pair(k=k, dilation=dilation, bias=bias)
    x = torch.randn(3, 6, *size)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(ref(x))
    out_r, out_f = ref(xr), fast(xf)
    torch.testing.assert_close(out_f, out_r)
    (out_r * g).sum().backward()
    (out_f * g).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-5)


def test_gradcheck_double():
    _, fast = pair(channels=3)
    fast.double()
    x = torch.randn(2, 3, 5, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: DilatedDepthwiseConv2d.forward(fast, x), (x, fast.weight, fast.bias))


def test_frozen_weights_only_input_gradient():
    ref, fast = pair()
    fast.requires_grad_(False)
    ref.requires_grad_(False)
    x = torch.randn(2, 6, 6, 6)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(xr).square().sum().backward()
    fast(xf).square().sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-4, atol=1e-5)
    assert fast.weight.grad is None


@pytest.mark.parametrize("kwargs", [dict(dilation=1, padding=1), dict(dilation=2, padding=2, stride=2),
                                    dict(dilation=2, padding=1), dict(dilation=2, padding=2, groups=1),
                                    dict(dilation=2, padding=2, padding_mode="reflect")])
def test_ineligible_layers_are_left_alone(kwargs):
    groups = kwargs.pop("groups", 4)
    conv = nn.Conv2d(4, 4, 3, groups=groups, **kwargs)
    assert not eligible(conv)
    assert speed_up_dilated_depthwise(conv) == 0 and type(conv) is nn.Conv2d


def test_backbone_swaps_only_its_dilated_depthwise_layers():
    cfg = Config.from_params({"backbone": "mobilenetv2_100", "pretrained": False, "image_size": 64})
    plain = Config.from_params({"backbone": "mobilenetv2_100", "pretrained": False, "image_size": 64,
                                "output_stride": 32})
    dilated = create_backbone(cfg.model, image_size=64)
    swapped = [m for m in dilated.modules() if isinstance(m, DilatedDepthwiseConv2d)]
    assert len(swapped) == 3   # the last stage's three depthwise 3 x 3 convolutions, dilation 2
    assert all(m.dilation == (2, 2) for m in swapped)
    undilated = create_backbone(plain.model, image_size=64)
    assert not any(isinstance(m, DilatedDepthwiseConv2d) for m in undilated.modules())
    assert list(dilated.state_dict()) == list(undilated.state_dict())   # same keys: checkpoints and weights load
