"""Would a mixture likelihood train sharper alpha masks than MSE? Continue a trained model with each loss.

    .venv/bin/python benchmarks/discovery_loss_probe.py RUN {mse,mix,both,distil} STEPS LR SIGMA OUT
    .venv/bin/python benchmarks/discovery_loss_probe.py outputs/discovery_dsprites_dec32/s12k_seed0 \\
        mix 2000 2.5e-4 0.1 outputs/probe_mix/ds0_mix_s01

Loads RUN's ``params.yaml`` and ``model.pt`` (a finished object-discovery cell) and trains it STEPS more
steps with Adam at a constant LR (fresh optimiser state; gradient norm clipped to 1; random batches from
the training scenes, the same ones in every arm), on one of three losses:

- ``mse``: the reconstruction MSE, the paper's loss and ``fit``'s (the control);
- ``mix``: the per-pixel Gaussian-mixture negative log-likelihood of MONet and IODINE, the masks the
  mixture weights and each slot's painting a component's mean, ``-2 sigma^2 / 3 log sum_k m_k
  N(x; rgb_k, sigma^2)`` per pixel, constants dropped and scaled so that with one-hot masks it is the MSE
  of the owning slot's painting. Its gradient pulls each mask towards the pixel's posterior (the
  ``posterior`` readout of ``slotlib.discover.model.posterior_masks``, with a fixed sigma);
- ``both``: the MSE plus that;
- ``distil``: the MSE plus SIGMA (here a weight, not a sigma) times the mean over pixels of
  KL(posterior || masks), the posterior held fixed: the mixture's M-step for its weights alone, pulling
  each alpha mask towards the model's own colour posterior and leaving the paintings to the MSE.

Then evaluates the 500 test scenes as ``fit`` does and writes ``res.json`` (both readouts' FG-ARI, MSE,
``error_metrics``) and ``per_scene.npy`` (alpha FG-ARI per scene, for a paired test) to OUT, printing
validation FG-ARI every 500 steps. A probe, not a parameter: no arm helped alpha masks.
Results: docs/results.md, "Multi-dSprites-style scenes".
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import discovery_paired   # this folder's: run as a script, it is on sys.path
import numpy as np
import torch
import torch.nn.functional as F

from slotlib.discover.fit import make_splits
from slotlib.discover.metrics import error_metrics, evaluate, to_input
from slotlib.discover.model import Output, mixture_log_joint
from slotlib.runtime import flushing_denormals

ARMS = ("mse", "mix", "both", "distil")


def mixture_nll(x: torch.Tensor, out: Output, var: float) -> torch.Tensor:
    """Mean over pixels of ``-2 var / 3 * log sum_k m_k exp(-|x - rgb_k|^2 / (2 var))`` (MSE units)."""
    log_p = torch.logsumexp(mixture_log_joint(x, out.rgb, out.masks, var), dim=1)    # [B,1,H,W]
    return (-2 * var / 3 * log_p).mean()


def posterior_kl(out: Output) -> torch.Tensor:
    """Mean over pixels of KL(posterior || masks) over slots; the posterior is computed without gradient."""
    post = out.posterior
    return (post * (post.clamp_min(1e-12).log() - out.masks.clamp_min(1e-12).log())).sum(1).mean()


def main() -> None:
    if len(sys.argv) != 7 or sys.argv[2] not in ARMS:
        sys.exit(f"usage: discovery_loss_probe.py RUN {{{','.join(ARMS)}}} STEPS LR SIGMA OUT")
    run, arm, steps, lr, sigma, out = (sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]),
                                       float(sys.argv[5]), Path(sys.argv[6]))
    torch.manual_seed(123)                                                  # slot samples: the same in every arm
    cfg, model = discovery_paired.load(Path(run))
    splits = make_splits(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = torch.Generator().manual_seed(7)
    start = time.perf_counter()
    model.train()
    with flushing_denormals():
        for step in range(1, steps + 1):
            idx = torch.randint(len(splits.train), (cfg.batch_size,), generator=batches).numpy()
            x = to_input(splits.train.images[idx])
            output = model(x)
            mse = F.mse_loss(output.recon, x)
            loss = {"mse": lambda: mse, "mix": lambda: mixture_nll(x, output, sigma ** 2),
                    "both": lambda: mse + mixture_nll(x, output, sigma ** 2),
                    "distil": lambda: mse + sigma * posterior_kl(output)}[arm]()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 500 == 0:
                val = evaluate(model, splits.val, masks="alpha")
                model.train()
                print(f"{step} mse {mse.item():.4f} loss {loss.item():.4f} val alpha {val['fg_ari_alpha']:.3f} "
                      f"posterior {val['fg_ari_posterior']:.3f} {time.perf_counter() - start:.0f}s", flush=True)
        test = evaluate(model, splits.test, seed=1, masks="alpha")
    out.mkdir(parents=True, exist_ok=True)
    result = dict(run=run, arm=arm, steps=steps, lr=lr, sigma=sigma, fg_ari_alpha=test["fg_ari_alpha"],
                  fg_ari_posterior=test["fg_ari_posterior"], test_mse=test["mse"],
                  **error_metrics(splits.test.masks, test["output"]), seconds=round(time.perf_counter() - start, 1))
    np.save(out / "per_scene.npy", test["per_scene_fg_ari"])
    (out / "res.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
