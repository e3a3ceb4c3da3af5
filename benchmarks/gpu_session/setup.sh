#!/bin/bash
# Device call 1: stage part 1 of the data, the weights, the torchgeo lists and timm 1.0.31; check the software.
set -u
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
mkdir -p /tmp/d/data /tmp/d/weights /tmp/d/logs /tmp/d/runs /tmp/site
cp .gpu/a/eurosat.part.aa /tmp/d/ && cp .gpu/a/*.pth /tmp/d/weights/ && cp -r .gpu/a/torchgeo /tmp/d/torchgeo
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/a/timm-*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 - <<'PY'
import torch, torchvision, timm, numpy, pandas, yaml, PIL, tqdm, matplotlib
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "torchvision", torchvision.__version__, "timm", timm.__version__, timm.__file__)
print("numpy", numpy.__version__, "pandas", pandas.__version__, "pillow", PIL.__version__)
print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory / 2**30, "GiB")
import slotlib.classify.model, slotlib.classify.fit, slotlib.classify.bench
from slotlib.config import Config
from slotlib.classify.model import SlotClassifier
cfg = Config.from_params({"pretrained": False})
m = SlotClassifier(cfg.model, 10, pretrained=False).cuda().to(memory_format=torch.channels_last)
x = torch.randn(8, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
with torch.autocast("cuda", dtype=torch.bfloat16):
    logits, attn = m(x)
logits.float().sum().backward()
print("mobilevitv2_075 + scouter bf16 step ok", tuple(logits.shape), tuple(attn.shape))
PY
python3 -c "import papermill" 2>/dev/null && echo "papermill present" || echo "papermill absent"
nproc; free -g | head -2; df -h /tmp | tail -1
