"""Loading a features_only backbone says nothing that is expected (issue 31), and keeps real warnings."""

import logging
import os
from pathlib import Path

import pytest
import torch

from slotlib.classify.backbone import TIMM_LOAD_LOG, create_backbone, local_weights
from slotlib.config import ModelConfig

WEIGHTS = os.environ.get("SLOTLIB_WEIGHTS")
needs_weights = pytest.mark.skipif(
    not WEIGHTS or not any(Path(WEIGHTS).glob("mobilenetv2_100.*")) and not Path(WEIGHTS).is_file(),
    reason="SLOTLIB_WEIGHTS is unset or holds no mobilenetv2_100 weights file")


def load_messages(caplog, **model) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        create_backbone(ModelConfig(backbone="mobilenetv2_100", pretrained=True, **model))
    assert logging.getLogger(TIMM_LOAD_LOG).filters == []   # the filter lives for the load alone
    return [r.getMessage() for r in caplog.records if r.name.startswith("timm")]


@needs_weights
def test_the_left_out_classifier_head_is_not_reported(caplog):
    """mobilenetv2_100's weights hold conv_head, bn2 and classifier, which a features_only model has not:
    timm warned 'Unexpected keys (conv_head.weight, ...)' on every run."""
    for model in ({}, {"feature_stride": 8}):
        assert not [m for m in load_messages(caplog, **model) if "Unexpected keys" in m]


@needs_weights
def test_unexpected_keys_of_the_model_itself_are_still_reported(caplog, tmp_path):
    """A key under a module the model does have means the weights do not fit: that warning stays."""
    state = torch.load(local_weights("mobilenetv2_100", WEIGHTS), weights_only=True)
    state["conv_stem.surprise"] = torch.zeros(1)
    path = tmp_path / "mobilenetv2_100.tampered.pth"
    torch.save(state, path)
    messages = [m for m in load_messages(caplog, pretrained_file=str(path)) if "Unexpected keys" in m]
    assert len(messages) == 1 and "conv_stem.surprise" in messages[0] and "conv_head.weight" in messages[0]
