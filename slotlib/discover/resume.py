"""Resuming an object-discovery run: what ``last.pt`` holds, written as training goes, read on the next call.

A run stopped part-way (Ctrl-C, a killed process, the end of a session) keeps ``last.pt`` from its last
checkpoint; calling ``fit`` on the same folder with the same parameters continues from there and ends
with the weights, history and test figures of a run never stopped: the checkpoint carries the batch
order (its generator, permutation and position), the RNG that draws the slot samples, the optimiser and
the history so far. Once ``model.pt`` is written ``last.pt`` goes. The classifier's counterpart is
``slotlib.classify.fit.load_resume``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import ConfigError
from ..runs.files import save_torch_atomic
from ..runs.folder import load_checkpoint, require_same_parameters

if TYPE_CHECKING:
    from ..config import DiscoveryConfig

LAST = "last.pt"
CHECKPOINT_EVERY = 500   # steps between checkpoints besides every evaluation (one to two minutes on this CPU)
KEYS = {"digest", "step", "model", "optimizer", "order", "perm", "pos", "rows", "train_seconds", "scores", "rng"}


@dataclass
class LoopState:
    """Where training stands; with the weights and the optimiser, what ``last.pt`` holds."""

    order: torch.Generator                     # draws the batch order, one permutation per pass
    step: int = 0                              # last finished step
    perm: torch.Tensor | None = None           # this pass's order of the training scenes
    pos: int = 0                               # scenes of it used so far
    rows: list[dict] = field(default_factory=list)        # history.csv so far
    train_seconds: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)  # the last validation figures (for metrics.json)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators that draw slot samples: the CPU's, and the accelerator's where the model lives there."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    elif "mps" in state and device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


def save_last(out: Path, cfg: "DiscoveryConfig", model: torch.nn.Module, opt: torch.optim.Optimizer,
              state: LoopState, device: torch.device) -> None:
    save_torch_atomic({"digest": cfg.digest(), "step": state.step, "model": model.state_dict(),
                       "optimizer": opt.state_dict(), "order": state.order.get_state(), "perm": state.perm,
                       "pos": state.pos, "rows": state.rows, "train_seconds": state.train_seconds,
                       "scores": state.scores, "rng": rng_state(device)}, out / LAST)


def load_last(out: Path, cfg: "DiscoveryConfig", model: torch.nn.Module, opt: torch.optim.Optimizer,
              state: LoopState, device: torch.device) -> bool:
    """Load ``out/last.pt`` into the model, optimiser, ``state`` and the RNG; False when there is none.

    Refuses, before anything is written, a file that is not such a checkpoint (DamagedRunFile from
    ``load_checkpoint``, or ConfigError) and one written with other parameters.
    """
    path = out / LAST
    if not path.exists():
        return False
    ckpt: Any = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not KEYS <= set(ckpt):
        raise ConfigError(f"{path} is not an object-discovery checkpoint (it lacks "
                          f"{', '.join(sorted(KEYS - set(ckpt) if isinstance(ckpt, dict) else KEYS))}); "
                          f"delete it to start the run over")
    require_same_parameters(path, ckpt, cfg.digest())
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    state.order.set_state(ckpt["order"])
    state.step, state.perm, state.pos = ckpt["step"], ckpt["perm"], ckpt["pos"]
    state.rows, state.train_seconds, state.scores = ckpt["rows"], ckpt["train_seconds"], ckpt["scores"]
    set_rng_state(ckpt["rng"], device)
    return True
