"""Where does each head look, on frozen features? Accuracy and a mosaic localisation proxy, in seconds.

Stage 1 on cached frozen features (slotlib.classify.frozen) of mobilenetv2_100 at 64 px (stride 16, a
4 x 4 token map), 400 tiles per class, random split 42; each argument is one head setting
(``K=V,K=V``; ``X_epochs=N`` sets the frozen epochs, default 3), trained with seeds 0..NSEED-1
(env NSEED, default 2). Printed per setting: validation accuracy after epoch 1 and the last epoch;
"mosaic", the share of each class's map mass inside its own quadrant of 300 feature-space mosaics
(four validation tiles of four classes, their 4 x 4 feature maps put side by side: a proxy for the
image mosaics of `slotlib explain`, chance 0.25); the predicted class's map's largest value and its
sd over tokens on single tiles (sd 0: a uniform map).

    EUROSAT_ROOT=../shared/data SLOTLIB_WEIGHTS=../shared/weights python benchmarks/slot_maps.py \
        head=linear head=slot head=slot,slot_score=attention,slot_iters=1
"""
import sys, os, torch, numpy as np
import slotlib.classify.frozen as fz
from slotlib.config import Config, parse_set
from slotlib.data.eurosat import load_eurosat
from slotlib.data.splits import split_indices
from slotlib.classify.model import SlotClassifier
torch.set_num_threads(2)
BASE = {"backbone": "mobilenetv2_100", "pretrained": True, "image_size": 64, "per_class_limit": 400, "stage1_lr": 1e-3}
cfg = Config.from_params(BASE)
ds = load_eurosat(cfg.data.data_root, per_class_limit=400)
splits = split_indices(ds, "random", split_seed=42, split_fractions=cfg.data.split_fractions)
idx = torch.as_tensor(list(splits["train"]) + list(splits["val"]))
cache = os.path.join(os.environ.get("TMPDIR", "/tmp"), "slotlib_slot_maps_feats400.pt")
if os.path.exists(cache): feats = torch.load(cache)
else: feats = fz.frozen_features(cfg, ds.images[idx.numpy()]); torch.save(feats, cache)
labels = torch.as_tensor(ds.labels)[idx]
train, val = torch.arange(len(splits["train"])), torch.arange(len(splits["train"]), len(idx))
print("features", tuple(feats.shape))
models = []
orig = fz.SlotClassifier
class SC(orig):
    def __init__(s, *a, **k): super().__init__(*a, **k); models.append(s)
fz.SlotClassifier = SC
rng = np.random.default_rng(0)
vl = labels[val].numpy()
M = 300
quads = []
for _ in range(M):
    four = rng.choice(10, 4, replace=False)
    quads.append([(int(val[rng.choice(np.flatnonzero(vl == c))]), c) for c in four])
def mosaic_score(model):
    model.eval(); shares = []; tops = []
    with torch.no_grad():
        f = torch.stack([torch.cat([torch.cat([feats[q[0][0]], feats[q[1][0]]], -1), torch.cat([feats[q[2][0]], feats[q[3][0]]], -1)], -2) for q in quads])
        logits, attn = model.from_features(f)
        b, s, n = attn.shape; h = int(n ** .5)
        K = 10; cls = attn.view(b, K, s // K, h, h).sum(2).clamp(min=0)
        for i, q in enumerate(quads):
            for j, (_, c) in enumerate(q):
                m = cls[i, c]; qm = m.view(2, h // 2, 2, h // 2).sum((1, 3)).flatten()
                shares.append(float(qm[j] / qm.sum()) if qm.sum() > 0 else 0.25)
        # map peakedness on single val tiles: predicted class's map max and sd over tokens
        lg, at = model.from_features(feats[val])
        pred = lg.argmax(1); b, s, n = at.shape
        cm = at.view(b, 10, s // 10, n).sum(2)[torch.arange(b), pred]
    return np.mean(shares), float(cm.max(1).values.mean()), float(cm.std(1).mean())
for spec in sys.argv[1:]:
    parts = dict(x.split("=", 1) for x in spec.split(","))
    ep = int(parts.pop("X_epochs", 3))
    res = []
    for seed in range(int(os.environ.get("NSEED", 2))):
        c = Config.from_params({**BASE, **parse_set([f"{k}={v}" for k, v in parts.items()]), "seed": seed})
        models.clear()
        run = fz.train_on_features(c, feats, labels, train, val, epochs=ep)
        res.append([run.val_acc[0] * 100, run.val_acc[-1] * 100, *mosaic_score(models[-1])])
    r = np.array(res)
    print(f"{spec:50s} acc ep1 {r[:,0].mean():.2f} last {r[:,1].mean():.2f} | mosaic {r[:,2].mean():.3f} | map max {r[:,3].mean():.3f} sd {r[:,4].mean():.3f}", flush=True)
