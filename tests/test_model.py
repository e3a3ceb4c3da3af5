"""SlotClassifier on a timm backbone: shapes, parameter counts, grid axes, weights (fast, CPU)."""

import os
from pathlib import Path

import pytest
import timm
import torch

from slotlib.classify.losses import classification_loss
from slotlib.classify.model import SlotClassifier, TokenRMSNorm, sine_position_encoding
from slotlib.config import Config, ConfigError
from slotlib.heads.scouter import area_loss

# The offline ImageNet weights: where $SLOTLIB_WEIGHTS says (CI sets it), else ../shared/weights beside the clone.
_WEIGHTS = Path(os.environ.get("SLOTLIB_WEIGHTS") or Path(__file__).resolve().parents[2] / "shared/weights")
SHARED_WEIGHTS = _WEIGHTS if _WEIGHTS.is_file() else _WEIGHTS / "mobilenetv2_100.tv_in1k_qnnpack_dequant.pth"
PX = 64


def build(**params) -> SlotClassifier:
    torch.manual_seed(0)
    cfg = Config.from_params({"pretrained": False, **params})
    return SlotClassifier(cfg.model, num_classes=10, head_params=cfg.head_params)


def run(model: SlotClassifier, train: bool = False, seed: int = 0):
    model.train(train)
    torch.manual_seed(123)
    images = torch.randn(2, 3, PX, PX)
    torch.manual_seed(seed)
    return model(images)


@pytest.mark.parametrize("params,slots", [
    ({"head": "scouter"}, 10),
    ({"head": "scouter", "slots_per_class": 3, "scouter_sign": -1, "slot_iters": 2}, 30),
    ({"head": "scouter", "feature_stride": 16, "hidden_dim": 64}, 10),
    ({"head": "slot"}, 10),
    ({"head": "slot", "slots_per_class": 2, "slot_iters": 1}, 20),
    ({"head": "linear"}, 10),
])
def test_output_shapes(params, slots):
    model = build(**params)
    logits, attn = run(model)
    h, w = model.token_grid(PX)
    assert logits.shape == (2, 10)
    assert attn.shape == (2, slots, h * w)
    assert torch.isfinite(logits).all() and torch.isfinite(attn).all()


def test_feature_stride_picks_the_level_from_feature_info():
    deep, mid = build(), build(feature_stride=16)
    assert (deep.stride, mid.stride) == (32, 16)
    assert mid.token_grid(PX) == (4, 4) and deep.token_grid(PX) == (2, 2)
    # only the stages up to the chosen level are built
    assert mid.parameter_counts()["n_params_backbone"] < deep.parameter_counts()["n_params_backbone"]
    with pytest.raises(ConfigError, match="feature_stride"):
        build(feature_stride=12)


@pytest.mark.parametrize("backbone", ["mobilevitv2_075", "mobilenetv2_100"])
def test_output_stride_auto_keeps_a_token_map_worth_drawing(backbone):
    """Stride 32 leaves 2 x 2 tokens on a 64 px tile: auto dilates to 16 (4 x 4); 224 px keeps 7 x 7 or more."""
    small, large = (SlotClassifier(Config.from_params({"pretrained": False, "backbone": backbone}).model, 10,
                                   image_size=px) for px in (64, 224))
    assert (small.stride, small.token_grid(64)) == (16, (4, 4))
    assert large.stride == 32 and min(large.token_grid(224)) >= 7     # mobilevitv2 pads to 8 x 8
    # dilation keeps the weights: the same parameters, loadable both ways
    assert small.parameter_counts() == large.parameter_counts()
    small.load_state_dict(large.state_dict())
    # without image_size (parameter counts, checkpoints read elsewhere) the backbone is as timm builds it
    assert SlotClassifier(Config.from_params({"pretrained": False, "backbone": backbone}).model, 10).stride == 32


@pytest.mark.parametrize("params,grid", [
    ({"output_stride": 8}, (8, 8)),
    ({"output_stride": 32}, (2, 2)),          # the backbone as it is: the setting that broke SCOUTER at 64 px
    ({"feature_stride": 16}, (4, 4)),         # a shallower level instead; no dilation on top
])
def test_output_stride_explicit(params, grid):
    model = SlotClassifier(Config.from_params({"pretrained": False, **params}).model, 10, image_size=64)
    assert model.token_grid(64) == grid


def test_output_stride_refused_clearly():
    with pytest.raises(ConfigError, match=r"output_stride.*null \(auto\), 32, 16 or 8"):
        Config.from_params({"output_stride": 4})
    with pytest.raises(ConfigError, match="output_stride.*null when feature_stride is set"):
        Config.from_params({"output_stride": 16, "feature_stride": 16})
    vit = Config.from_params({"pretrained": False, "backbone": "vit_tiny_patch16_224", "output_stride": 8})
    with pytest.raises(ConfigError, match="cannot dilate"):
        SlotClassifier(vit.model, 10, image_size=64)
    # auto on a backbone that cannot dilate keeps its own stride instead of failing
    auto = Config.from_params({"pretrained": False, "backbone": "vit_tiny_patch16_224"})
    assert SlotClassifier(auto.model, 10, image_size=32).stride == 16


def test_reference_parameter_count():
    """The reference's 2,664,049 counted an unused 16,512-parameter query projection.

    The default SCOUTER tokens skip the GroupNorm (token_norm 'auto' rescales them, no parameters); with it, 256 more.
    """
    assert timm.__version__ == "1.0.31", "the pinned count was measured with timm 1.0.31"
    counts = build(backbone="mobilevitv2_075", head="scouter", hidden_dim=128, slots_per_class=1).parameter_counts()
    assert counts == {"n_params": 2_647_153, "n_params_backbone": 2_481_009, "n_params_head": 166_144,
                      "n_trainable_stage1": 166_144, "n_trainable_stage2": 2_647_153}
    grouped = build(backbone="mobilevitv2_075", token_norm="group").parameter_counts()
    assert grouped["n_params"] == 2_647_409


def loss_of(model, lambda_area=None):
    if lambda_area is not None and hasattr(model.head, "lambda_area"):
        model.head.lambda_area = lambda_area
    logits, attn = run(model)
    loss, _ = classification_loss(logits, torch.arange(2), attn, model.head)
    return loss


@pytest.mark.parametrize("axis,a,b", [
    ("dropout", 0.0, 0.5),
    ("drop_path", 0.0, 0.5),
    ("slot_iters", 5, 3),
    ("slots_per_class", 1, 2),
    ("hidden_dim", 128, 64),
    ("head", "scouter", "slot"),
    ("head", "scouter", "linear"),
    ("scouter_sign", 1, -1),
    ("scouter_norm", "none", "scouter"),
    ("scouter_logit_scale", 1.0, 16.0),
    ("token_norm", "group", "none"),
    ("token_norm", "rms", "none"),
])
def test_every_grid_axis_changes_the_output(axis, a, b):
    """The reference's dropout axis reached no module; every axis here must change the computation."""
    train = axis in ("dropout", "drop_path")  # they act only in training mode
    out_a, _ = run(build(**{axis: a}), train=train)
    out_b, _ = run(build(**{axis: b}), train=train)
    assert not torch.allclose(out_a, out_b)


def test_lambda_area_and_area_power_change_the_loss():
    assert build(lambda_area=0.1).head.lambda_area == 0.1 and build(area_power=2.0).head.area_power == 2.0
    model = build()
    assert not torch.isclose(loss_of(model, 0.1), loss_of(model, 0.05))
    logits, attn = run(model)
    assert not torch.isclose(area_loss(attn, 1.0), area_loss(attn, 2.0))
    torch.testing.assert_close(area_loss(attn), attn.mean())


def test_area_loss_only_for_scouter():
    model = build(head="slot")
    torch.testing.assert_close(loss_of(model, 0.0), loss_of(model, 0.5))


def test_dropout_reaches_a_module_and_is_off_in_eval():
    model = build(dropout=0.5)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.modules())
    torch.testing.assert_close(run(model, seed=1)[0], run(model, seed=2)[0])  # eval: deterministic


@pytest.mark.parametrize("head", ["scouter", "slot", "linear"])
def test_one_optimiser_step_is_finite_and_moves_every_head_parameter(head):
    model = build(head=head)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logits, attn = run(model, train=True)
    loss, parts = classification_loss(logits, torch.tensor([0, 1]), attn, model.head)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    frozen = [n for n, p in model.named_parameters() if not n.startswith("backbone.") and torch.equal(p, before[n])]
    assert frozen == []


def test_sine_position_encoding():
    pos = sine_position_encoding(3, 4, 16)
    assert pos.shape == (1, 12, 16)
    assert torch.unique(pos[0], dim=0).shape[0] == 12  # every position is distinct
    # the first half encodes y (constant along a row), the second x (constant along a column)
    grid = pos[0].view(3, 4, 16)
    torch.testing.assert_close(grid[:, :1, :8].expand(3, 4, 8), grid[:, :, :8])
    torch.testing.assert_close(grid[:1, :, 8:].expand(3, 4, 8), grid[:, :, 8:])


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason=f"local ImageNet weights not found at {SHARED_WEIGHTS}")
def test_pretrained_file_loads_local_weights():
    model = build(backbone="mobilenetv2_100", pretrained_file=str(SHARED_WEIGHTS))
    state = torch.load(SHARED_WEIGHTS, weights_only=True)
    torch.testing.assert_close(model.backbone.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert round(model.parameter_counts()["n_params"] / 1e6, 2) == 1.97
    with pytest.raises(ConfigError, match="pretrained_file.*do not fit") as err:
        build(backbone="resnet18", pretrained_file=str(SHARED_WEIGHTS))
    # the sentence names the first missing, unexpected or misshapen key, and the likely cause
    assert any(k in str(err.value) for k in ("missing: ", "unexpected: ", "wrong shape: "))
    assert "another model's" in str(err.value)
    assert not str(err.value).rstrip().endswith(":")


def test_pretrained_file_missing_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="pretrained_file.*not a file"):
        build(pretrained_file=str(tmp_path / "nope.pth"))


def test_unreachable_hub_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("cannot reach the hub")
        return create(*args, **kwargs)

    create = timm.create_model
    monkeypatch.delenv("SLOTLIB_WEIGHTS", raising=False)
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="timm hub.*SLOTLIB_WEIGHTS.*pretrained_file.*pretrained: false"):
        build(pretrained=True)


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason=f"local ImageNet weights not found at {SHARED_WEIGHTS}")
def test_weights_from_the_slotlib_weights_folder(tmp_path, monkeypatch):
    """`pretrained: true` with $SLOTLIB_WEIGHTS: the folder's <backbone>.*.pth, or the file it names."""
    state = torch.load(SHARED_WEIGHTS, weights_only=True)
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / SHARED_WEIGHTS.name).symlink_to(SHARED_WEIGHTS)
    (folder / "README.md").write_text("not weights")
    for where in (folder, folder / SHARED_WEIGHTS.name):
        monkeypatch.setenv("SLOTLIB_WEIGHTS", str(where))
        model = build(backbone="mobilenetv2_100", pretrained=True)
        torch.testing.assert_close(model.backbone.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    monkeypatch.setenv("SLOTLIB_WEIGHTS", str(folder))
    with pytest.raises(ConfigError, match="SLOTLIB_WEIGHTS.*holds no weights for 'resnet18'"):
        build(backbone="resnet18", pretrained=True)
    (folder / "mobilenetv2_100.other.pth").symlink_to(SHARED_WEIGHTS)
    with pytest.raises(ConfigError, match="several weights files"):
        build(backbone="mobilenetv2_100", pretrained=True)
    monkeypatch.setenv("SLOTLIB_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="neither a file nor a folder"):
        build(backbone="mobilenetv2_100", pretrained=True)
    # random weights ignore it
    build(backbone="resnet18", pretrained=False)


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="backbone"):
        build(backbone="not_a_model")


@pytest.mark.slow
@pytest.mark.parametrize("head", ["scouter", "slot"])
def test_compiled_model_matches_eager_forward_and_backward(head):
    """`compile: true` works for both slot heads (minutes on CPU: inductor builds C++ kernels)."""
    model = build(head=head, backbone="resnet10t", hidden_dim=32, slot_iters=2).eval()
    x = torch.randn(2, 3, 64, 64)
    eager_logits, eager_attn = model(x)
    compiled = torch.compile(model)
    logits, attn = compiled(x)
    assert torch.allclose(logits, eager_logits, atol=1e-4) and torch.allclose(attn, eager_attn, atol=1e-4)
    model.train()
    logits, attn = compiled(x)                                          # training mode: a second graph
    loss, _ = classification_loss(logits, torch.tensor([0, 1]), attn, model.head)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.head.parameters())


def test_slot_score_changes_the_slot_heads_output():
    out_a, _ = run(build(head="slot", slot_score="per_class"))
    out_b, _ = run(build(head="slot", slot_score="shared"))
    assert not torch.allclose(out_a, out_b)


@pytest.mark.parametrize("head,norm", [("scouter", TokenRMSNorm), ("slot", torch.nn.GroupNorm),
                                       ("linear", torch.nn.GroupNorm)])
def test_token_norm_auto_follows_the_head(head, norm):
    """SCOUTER reads each token's channel mean, which GroupNorm centres: 'auto' only rescales its tokens."""
    assert type(build(head=head).norm) is norm
    assert type(build(head=head, token_norm="group").norm) is torch.nn.GroupNorm
    assert type(build(head=head, token_norm="none").norm) is torch.nn.Identity


def test_looking_up_feature_strides_leaves_the_global_rng_alone():
    """The strides are looked up once per process (cached); that first lookup must not consume random
    numbers, or a run resumed in a new process would initialise its head differently (found by
    test_resume_after_sigkill_matches_an_uninterrupted_run)."""
    from slotlib.classify import backbone as model_module

    model_module._strides.cache_clear()
    before = torch.get_rng_state()
    model_module._strides("mobilenetv2_100")
    assert torch.equal(before, torch.get_rng_state())


def test_a_shallower_feature_level_builds_and_counts_only_the_stages_it_uses():
    """timm's EfficientNetFeatures builds every block even for an early out_index; slotlib drops the rest,
    so feature_stride: 8 neither counts nor runs mobilenetv2_100's later stages."""
    from slotlib.classify.backbone import create_backbone

    deep = create_backbone(Config.from_params({"backbone": "mobilenetv2_100", "pretrained": False}).model, False)
    cfg = Config.from_params({"backbone": "mobilenetv2_100", "pretrained": False, "feature_stride": 8})
    shallow = create_backbone(cfg.model, False)
    assert len(shallow.blocks) == 3 and len(deep.blocks) == 7
    assert sum(p.numel() for p in shallow.parameters()) < 0.05 * sum(p.numel() for p in deep.parameters())
    (features,) = shallow(torch.zeros(2, 3, 64, 64))
    assert features.shape == (2, 32, 8, 8)
