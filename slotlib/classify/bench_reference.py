"""The reference code's data path, for ``slotlib bench`` to compare against: each tile a PIL image
decoded from its JPEG, the training transforms on PIL, a DataLoader with worker processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import Config


class JpegTiles(torch.utils.data.Dataset):
    """The reference's dataset: ``(transform(PIL image), label)``, decoding the JPEG on every access.

    Falls back to PIL images made from the uint8 cache when the JPEGs are not on this machine
    (then the decode cost is missing and the reference looks faster than it is; ``source`` says so).
    """

    def __init__(self, ds, indices: np.ndarray, transform) -> None:
        self.ds, self.indices, self.transform = ds, np.asarray(indices), transform
        self.source = "jpeg" if (Path(ds.root) / ds.paths[int(self.indices[0])]).exists() else "cache"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        from PIL import Image

        j = int(self.indices[i])
        if self.source == "jpeg":
            with Image.open(Path(self.ds.root) / self.ds.paths[j]) as f:
                image = f.convert("RGB")
        else:
            image = Image.fromarray(np.asarray(self.ds.images[j]))
        return self.transform(image), int(self.ds.labels[j])


def reference_transform(image_size: int, mean, std):
    """The reference recipe on PIL images (torchvision.transforms semantics)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip(), v2.RandomRotation(15),
                       v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2), v2.PILToTensor(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))])


def reference_loader(ds, indices, config: Config, mean, std, workers: int, device: torch.device):
    dataset = JpegTiles(ds, indices, reference_transform(config.data.image_size, mean, std))
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.data.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(config.train.seed))
    return loader, dataset.source


def forever(loader) -> Iterator:
    """Batches without end, epoch after epoch."""
    while True:
        yield from loader
