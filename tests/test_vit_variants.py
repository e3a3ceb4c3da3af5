"""The clear-vit attention variants: each layer against a slow reference written from its equation, each
backbone built through timm and through a slotlib config, under every head."""

import math

import pytest
import timm
import torch

from slotlib.classify import vit_variants
from slotlib.config import Config, ConfigError
from slotlib.layers.vit_attention import (
    DifferenceSimilarityAttention,
    EntropyDiffAttention,
    SpatialSuppressionAttention,
    set_token_grid,
)

P, H, W = 1, 3, 4            # one class token, a 3 x 4 patch grid (not square: rows and columns not confused)
N, DIM, HEADS = P + H * W, 12, 2


def _pos(i):
    """(row, col) of patch token i (i >= P)."""
    return divmod(i - P, W)


def _idx(r, c):
    return P + r * W + c


def _qkv(layer, x, head_dim):
    b, n, _ = x.shape
    q, k, v = layer.qkv(x).reshape(b, n, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def _finish(layer, out):
    b, nh, n, d = out.shape
    return layer.proj(out.transpose(1, 2).reshape(b, n, nh * d))


def _layer(cls, **kwargs):
    torch.manual_seed(0)
    layer = cls(DIM, num_heads=HEADS, qkv_bias=True, **kwargs).eval()
    set_token_grid(layer, (H, W), P)
    return layer


def test_spatial_suppression_matches_its_equation():
    layer = _layer(SpatialSuppressionAttention)
    with torch.no_grad():
        layer.suppression.normal_()   # every kernel entry non-zero (the centre is masked)
    x = torch.randn(2, N, DIM)
    with torch.no_grad():
        q, k, v = _qkv(layer, x, DIM // HEADS)
        s = (q @ k.transpose(-2, -1)) * layer.scale
        kern = layer.suppression
        ref = s.clone()
        for h in range(HEADS):
            for i in range(P, N):
                r, c = _pos(i)
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        if (dr, dc) == (0, 0) or not (0 <= r + dr < H and 0 <= c + dc < W):
                            continue
                        ref[:, h, i, :] -= kern[h, dr + 1, dc + 1] * s[:, h, _idx(r + dr, c + dc), :]
        expected = _finish(layer, ref.softmax(-1) @ v)
        torch.testing.assert_close(layer.scores(q, k), ref)
        torch.testing.assert_close(layer(x), expected)


def test_spatial_suppression_is_two_dimensional_not_flattened():
    """A kernel that only looks at the right-hand neighbour: the last patch of a row gets nothing from the
    first patch of the next row (its flattened successor), which clear-vit's running version would mix in."""
    layer = _layer(SpatialSuppressionAttention)
    with torch.no_grad():
        layer.suppression.zero_()
        layer.suppression[:, 1, 2] = 1.0
        q, k, _ = _qkv(layer, torch.randn(1, N, DIM), DIM // HEADS)
        s = (q @ k.transpose(-2, -1)) * layer.scale
        out = layer.scores(q, k)
    end_of_row = _idx(0, W - 1)
    torch.testing.assert_close(out[:, :, end_of_row], s[:, :, end_of_row])        # no right neighbour
    torch.testing.assert_close(out[:, :, _idx(0, 0)], s[:, :, _idx(0, 0)] - s[:, :, _idx(0, 1)])
    torch.testing.assert_close(out[:, :, 0], s[:, :, 0])                          # the class token's query


def test_spatial_suppression_starts_as_plain_attention():
    from timm.layers import Attention

    layer = _layer(SpatialSuppressionAttention)
    torch.manual_seed(0)
    plain = Attention(DIM, num_heads=HEADS, qkv_bias=True).eval()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "suppression"})
    x = torch.randn(2, N, DIM)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), plain(x))


def test_difference_similarity_matches_its_equation():
    layer = _layer(DifferenceSimilarityAttention)
    x = torch.randn(2, N, DIM)
    with torch.no_grad():
        q, k, v = _qkv(layer, x, DIM // HEADS)

        def diff(t):
            out = t.clone()
            for i in range(P, N):
                r, c = _pos(i)
                nbrs = [_idx(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                        if (dr, dc) != (0, 0) and 0 <= r + dr < H and 0 <= c + dc < W]
                out[:, :, i] = t[:, :, i] - t[:, :, nbrs].mean(dim=2)
            return out

        a = ((diff(q) @ diff(k).transpose(-2, -1)) * layer.scale).softmax(-1)
        expected = _finish(layer, a @ v)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)
        layer.fused_attn = not layer.fused_attn   # both paths
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)


def test_entropy_diff_attention_matches_its_equation():
    layer = _layer(EntropyDiffAttention)
    assert not any("lambda" in name for name, _ in layer.named_parameters())   # no learned lambda left
    x = torch.randn(2, N, DIM)
    d = DIM // HEADS // 2
    with torch.no_grad():
        q, k, v = layer.qkv(x).chunk(3, dim=2)
        q = q.reshape(2, N, 2 * HEADS, d).transpose(1, 2)
        k = k.reshape(2, N, 2 * HEADS, d).transpose(1, 2)
        v = v.reshape(2, N, HEADS, 2 * d).transpose(1, 2)
        out = torch.zeros(2, HEADS, N, 2 * d)
        for b in range(2):
            for h in range(HEADS):
                a1 = (q[b, 2 * h] @ k[b, 2 * h].T / math.sqrt(d)).softmax(-1)
                a2 = (q[b, 2 * h + 1] @ k[b, 2 * h + 1].T / math.sqrt(d)).softmax(-1)
                for i in range(N):
                    entropy = -sum(float(p) * math.log(float(p)) for p in a2[i])
                    lam = entropy / math.log(N)
                    assert 0.0 <= lam <= 1.0
                    out[b, h, i] = (a1[i] - lam * a2[i]) @ v[b, h]
        out = layer.sub_norm(out) * (1 - layer.lambda_init)
        expected = layer.proj(out.transpose(1, 2).reshape(2, N, DIM))
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", list(vit_variants.VARIANTS))
def test_every_variant_is_a_timm_features_only_backbone(variant):
    name = vit_variants.model_name("micro", variant)
    assert timm.is_model(name)
    model = timm.create_model(name, features_only=True, out_indices=(-1,), img_size=32)
    feats = model(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 96, 4, 4)]
    assert model.feature_info.reduction() == [8]
    loss = feats[-1].square().mean()
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad), "unused parameters"


def _cfg(**params):
    return Config.from_params({"backbone": "slotvit_micro_p8_baseline", "pretrained": False, "image_size": 64,
                               "hidden_dim": 32, "slot_iters": 2, **params})


@pytest.mark.parametrize("head", ["scouter", "slot", "linear"])
def test_slotvit_backbone_under_every_head(head):
    from slotlib.classify.model import SlotClassifier, count_parameters

    cfg = _cfg(head=head)
    model = SlotClassifier(cfg.model, num_classes=10, image_size=64)
    logits, _ = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10)
    assert model.token_grid(64) == (8, 8)
    counts = count_parameters(cfg)
    assert counts["n_params_backbone"] == sum(p.numel() for p in model.backbone.parameters())
    # at 32 px the token grid and the position embedding shrink with the image
    small = count_parameters(_cfg(head=head, image_size=32))
    assert counts["n_params_backbone"] - small["n_params_backbone"] == (64 - 16) * 96


def test_slotvit_feature_stride_is_its_last_block():
    from slotlib.classify.model import SlotClassifier

    torch.manual_seed(0)
    a = SlotClassifier(_cfg().model, 10, image_size=64).backbone
    torch.manual_seed(0)
    b = SlotClassifier(_cfg(feature_stride=8).model, 10, image_size=64).backbone
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(a.eval()(x)[-1], b.eval()(x)[-1])


def test_slotvit_with_pretrained_weights_is_refused_in_one_sentence():
    with pytest.raises(ConfigError, match="parameter 'pretrained' must be false for 'slotvit_micro_p8_baseline'"):
        _cfg(pretrained=True)


def test_slotvit_normalisation_is_registered():
    from slotlib.data.transforms import normalization

    assert normalization("slotvit_tiny_p8_rope_mixed") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
