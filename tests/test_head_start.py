"""How fast the heads start: one frozen epoch on real ImageNet features of EuroSAT (CPU, seconds).

SCOUTER used to read the projected ReLU tokens as they are, which are small and nearly alike: after one
frozen epoch it stood at about 28% validation accuracy against the linear head's 89% (docs/results.md,
"How fast the heads start"). These tests pin that it no longer does. They need the real EuroSAT
(EUROSAT_ROOT) and mobilenetv2_100's ImageNet weights (SLOTLIB_WEIGHTS), as CI has them.
"""

import os
from pathlib import Path

import pytest
import torch

from slotlib.classify.frozen import frozen_features, train_on_features
from slotlib.config import Config
from slotlib.data.eurosat import load_eurosat
from slotlib.data.splits import split_indices

WEIGHTS, ROOT = os.environ.get("SLOTLIB_WEIGHTS"), os.environ.get("EUROSAT_ROOT")
pytestmark = [pytest.mark.data, pytest.mark.skipif(
    not WEIGHTS or not any(Path(WEIGHTS).glob("mobilenetv2_100.*")) or not ROOT
    or not (Path(ROOT) / "eurosat" / "2750").is_dir(),
    reason="needs the real EuroSAT (EUROSAT_ROOT) and mobilenetv2_100 weights (SLOTLIB_WEIGHTS)")]

BASE = {"backbone": "mobilenetv2_100", "pretrained": True, "image_size": 64, "per_class_limit": 300,
        "stage1_lr": 1e-3}


@pytest.fixture(scope="module")
def features():
    cfg = Config.from_params(BASE)
    ds = load_eurosat(cfg.data.data_root, per_class_limit=300)
    splits = split_indices(ds, "random", split_seed=42)
    idx = torch.as_tensor([*splits["train"], *splits["val"]])
    feats = frozen_features(cfg, ds.images[idx.numpy()])
    n = len(splits["train"])
    return feats, torch.as_tensor(ds.labels)[idx], torch.arange(n), torch.arange(n, len(idx))


def first_epoch(features, **params) -> float:
    return train_on_features(Config.from_params({**BASE, **params}), *features, epochs=1).val_acc[0]


def test_scouter_starts_within_reach_of_the_linear_head(features):
    linear = first_epoch(features, head="linear")
    scouter = first_epoch(features, head="scouter")
    assert linear > 0.8, f"the linear head itself did not learn ({linear:.3f})"
    assert scouter >= 0.9 * linear, f"SCOUTER {scouter:.3f} after one frozen epoch, linear {linear:.3f}"


def test_the_authors_raw_tokens_start_slowly(features):
    """The authors' setting stays reachable (token_norm: none, scouter_logit_scale: 1), and is what the
    rescaling fixed: it would fail the test above."""
    linear = first_epoch(features, head="linear")
    authors = first_epoch(features, head="scouter", token_norm="none", scouter_logit_scale=1.0)
    assert authors < 0.9 * linear
