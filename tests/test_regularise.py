"""Mixup/CutMix (timm ``Mixup``) mixes training batches only; the weights' moving average (timm
``ModelEmaV3``) is what validation judges, what best.pt keeps and what a resumed run restores (the
resume itself: tests/test_train.py, test_resume_after_sigkill_matches_an_uninterrupted_run)."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup

from slotlib.classify import fit as training
from slotlib.classify.experiment import Experiment
from slotlib.classify.steps import Objective
from slotlib.config import Config, ConfigError


class NoTerms:
    def loss_terms(self, attn):
        return {}

    def diagnostics(self, attn):
        return {}


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3 * 4 * 4, 10)
        self.head = NoTerms()

    def forward(self, x):
        return self.lin(x.flatten(1)), torch.zeros(x.shape[0], 1, 16)


def test_mixup_mixes_the_training_batch_only():
    model, images, target = Tiny(), torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 2, 3])
    kept = images.clone()
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=10)
    objective = Objective(torch.device("cpu"), None, 0.1, mixup)
    np.random.seed(0)
    hard, logits, loss, _ = objective.train_batch(model, images, target)
    assert torch.equal(hard, target) and torch.equal(images, kept)   # the hard labels back; the batch untouched
    np.random.seed(0)
    mixed, soft = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=10)(kept.clone(), target)
    assert not torch.allclose(mixed, kept)
    assert torch.allclose(loss, F.cross_entropy(model(mixed)[0], soft))   # soft targets, smoothing inside them
    # evaluation calls the objective itself: never mixed
    plain = objective(model, images, target)[2]
    assert torch.allclose(plain, F.cross_entropy(model(kept)[0], target, label_smoothing=0.1))
    # timm's Mixup needs an even batch: an odd one trains unmixed
    odd = objective.train_batch(model, images[:3], target[:3])[2]
    assert torch.allclose(odd, F.cross_entropy(model(kept[:3])[0], target[:3], label_smoothing=0.1))


def test_objective_builds_mixup_only_when_asked():
    cpu = torch.device("cpu")
    assert Objective.of(Config.from_params({}), cpu, 10).mixup is None
    assert Objective.of(Config.from_params({"cutmix_alpha": 1.0}), cpu, 10).mixup is not None


@pytest.mark.parametrize("key, value", [("mixup_alpha", -0.1), ("cutmix_alpha", -1), ("ema_decay", 1.0),
                                        ("ema_decay", 0)])
def test_bad_regularisation_values_are_named(key, value):
    with pytest.raises(ConfigError, match=key):
        Config.from_params({key: value})


def test_new_parameters_at_their_defaults_keep_cell_ids():
    assert Config.from_params({"mixup_alpha": 0.0, "ema_decay": None}).digest() == Config.from_params({}).digest()
    assert Config.from_params({"ema_decay": 0.999}).digest() != Config.from_params({}).digest()


def test_the_moving_average_is_judged_and_kept(tiny_root, isolated_cache, tmp_path, monkeypatch):
    judged = []
    evaluate = Experiment.evaluate

    def spy(exp, split, step_model=None, tta="none"):
        if split == "val" and tta == "none":
            assert step_model is not None and step_model is not exp.model   # the average, not the live weights
            judged.append({k: v.clone() for k, v in step_model.state_dict().items()})
            live = exp.model.state_dict()
            judged[-1]["_differs"] = any(not torch.equal(v, live[k]) for k, v in step_model.state_dict().items()
                                         if v.is_floating_point())
        return evaluate(exp, split, step_model, tta)

    monkeypatch.setattr(Experiment, "evaluate", spy)
    params = {"data_root": str(tiny_root), "image_size": 64, "batch_size": 16, "pretrained": False, "hidden_dim": 32,
              "slot_iters": 2, "stage1_epochs": 1, "stage2_epochs": 2, "device": "cpu", "ema_decay": 0.9,
              "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "heatmap_tiles": 0, "explain_tiles": 0}
    metrics = training.train(Config.from_params(params), tmp_path / "run", progress=False)
    assert metrics["status"] == "done" and len(judged) == 3
    assert all(j.pop("_differs") for j in judged)   # the average lags the weights it follows
    with open(tmp_path / "run" / "history.csv") as f:
        history = list(csv.DictReader(f))
    best = max(range(len(history)), key=lambda i: float(history[i]["val_acc"]))   # the first best, as fit
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in judged[best].items())
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert all(torch.equal(last["ema"][k], v) for k, v in judged[-1].items())   # a resumed run restores it
