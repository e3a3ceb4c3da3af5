"""The head registry: each head one file, registered by name; nothing outside its file branches on its name."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from slotlib.classify.losses import classification_loss
from slotlib.classify.model import SlotClassifier
from slotlib.classify.steps import EpochResult, StagePlan, collapse_of
from slotlib.config import FIELDS, Config, ConfigError, ModelConfig
from slotlib.heads import HEADS, Head, NoParams, head_class, register_head
from slotlib.heads.registry import HEADS as REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def test_the_three_heads_are_registered_in_order():
    assert list(HEADS) == ["scouter", "slot", "linear"]
    assert all(issubclass(cls, Head) and cls.name == name for name, cls in HEADS.items())
    with pytest.raises(KeyError, match="registered: scouter, slot, linear"):
        head_class("mlp")


def test_no_module_outside_a_heads_file_branches_on_its_name():
    """A head's name in quotes, compared or listed, appears only in its own file and the registry (its
    default), so adding a head is one file: no if-chain elsewhere."""
    for name in HEADS:
        found = []
        for path in (ROOT / "slotlib").rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel in (f"slotlib/heads/{name}.py", "slotlib/heads/registry.py"):
                continue
            found += [f"{rel}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if re.search(rf"""(?:[=!]=|\bin\s*[(\[{{]|[(\[{{,])\s*["']{name}["']""", line)]
        assert found == [], f"'{name}' outside its head's file: {found}"


def test_model_config_holds_what_every_head_reads_and_no_more():
    assert len(dataclasses.fields(ModelConfig)) <= 10
    own = {f.name for cls in HEADS.values() for f in dataclasses.fields(cls.Params)}
    assert own.isdisjoint(f.name for f in dataclasses.fields(ModelConfig))
    assert {"scouter_logit_scale", "lambda_area", "slot_score", "slot_iters"} <= own <= set(FIELDS)


def test_auto_settings_are_resolved_in_the_config():
    """One name, one value: the config holds what 'auto' resolved to, for the head and the backbone."""
    scouter, slot = Config.from_params({"head": "scouter"}), Config.from_params({"head": "slot", "pretrained": False})
    assert (scouter.model.token_norm, slot.model.token_norm) == ("rms", "group")
    assert (scouter.train.stage2_batchnorm, slot.train.stage2_batchnorm) == ("frozen", "train")
    switched = scouter.with_params(head="linear")
    assert switched.model.token_norm == "group" and switched.digest() == Config.from_params({"head": "linear"}).digest()
    assert scouter.with_params(head="slot", token_norm="none").model.token_norm == "none"


def test_a_parameter_only_another_head_reads_is_kept_but_not_applied():
    """vit_variants sets slot_iters for its slot and linear cells: the linear cell keeps it (and its id)."""
    linear = Config.from_params({"head": "linear", "slot_iters": 3})
    assert isinstance(linear.head_params, NoParams) and linear.to_params()["slot_iters"] == 3
    assert linear.digest() != Config.from_params({"head": "linear"}).digest()   # as the ids were made
    with pytest.raises(ConfigError, match="slot_iters"):
        Config.from_params({"head": "linear", "slot_iters": 0})


@pytest.fixture
def toy_head():
    """A fourth head, defined the way a new head's file would define it."""

    @register_head("toy")
    class ToyHead(Head):
        loss_weights = ("toy_weight",)

        def __init__(self, num_classes: int, dim: int) -> None:
            super().__init__()
            self.score = torch.nn.Linear(dim, num_classes)

        @classmethod
        def from_params(cls, params: NoParams, num_classes: int, dim: int) -> "ToyHead":
            return cls(num_classes, dim)

        def forward(self, x, pos):
            attn = self.score(x + pos).transpose(1, 2).softmax(-1)       # [B,K,N]
            return self.score(x).amax(1), attn

        def loss_terms(self, attn):
            return {"peak": (0.5, attn.amax(-1).mean())}

    yield ToyHead
    del REGISTRY["toy"]


def test_a_new_head_is_one_class_and_works_everywhere(toy_head):
    cfg = Config.from_params({"head": "toy", "pretrained": False, "backbone": "resnet10t", "hidden_dim": 16})
    model = SlotClassifier(cfg.model, 10, head_params=cfg.head_params)
    assert isinstance(model.head, toy_head) and type(model.norm) is torch.nn.GroupNorm
    logits, attn = model(torch.randn(2, 3, 64, 64))
    loss, parts = classification_loss(logits, torch.tensor([0, 1]), attn, model.head)
    assert set(parts) == {"ce", "peak"} and torch.isclose(loss, parts["ce"] + 0.5 * parts["peak"])
    flat = EpochResult(2.3, 0.1, 1.0, 32, spread_mean=0.0, spread_max=0.0)
    assert "lower stage1_lr or toy_weight" in str(collapse_of(cfg, StagePlan(1, 1, 1e-3, True), 1, flat))
    assert cfg.digest() != Config.from_params({"pretrained": False, "backbone": "resnet10t", "hidden_dim": 16}).digest()


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered already"):
        register_head("scouter")(type("Again", (Head,), {}))


@pytest.mark.parametrize("params", [{"head": "scouter"}, {"head": "scouter", "scouter_sign": -1, "slots_per_class": 2},
                                    {"head": "linear"}])
def test_evidence_adds_up_to_the_logits_less_their_class_mean(params):
    # Softmax reads only the logits' differences from their mean; the evidence maps split exactly that
    # (less the linear head's bias, which no token holds) into one term per token.
    cfg = Config.from_params({"pretrained": False, "backbone": "resnet10t", "hidden_dim": 16, **params})
    torch.manual_seed(0)
    model = SlotClassifier(cfg.model, 10, head_params=cfg.head_params).eval()
    with torch.no_grad():
        logits, attn, evidence = model.evidence(torch.randn(3, 3, 64, 64))
    assert evidence.shape == (3, 10, attn.shape[-1])
    bias = model.head.fc.bias if params["head"] == "linear" else torch.zeros(10)
    centred = (logits - bias) - (logits - bias).mean(1, keepdim=True)
    assert torch.allclose(evidence.sum(-1), centred, atol=1e-5)
    assert evidence.abs().sum() > 0


def test_the_slot_heads_evidence_is_its_class_attention_over_the_even_share():
    cfg = Config.from_params({"pretrained": False, "backbone": "resnet10t", "hidden_dim": 16, "head": "slot"})
    model = SlotClassifier(cfg.model, 10, head_params=cfg.head_params).eval()
    with torch.no_grad():
        _, attn, evidence = model.evidence(torch.randn(2, 3, 64, 64))
    # softmax over the slots: a token's class attention sums to 1 over the classes, so the centred map
    # is positive exactly where a class wins more than a tenth of the token
    assert torch.allclose(evidence, attn.view(2, 10, -1, attn.shape[-1]).sum(2) - 0.1, atol=1e-6)
