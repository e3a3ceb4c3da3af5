"""Tiles in, batches out: EuroSAT (located or downloaded, decoded once into a cache, split), and
synthetic scenes for object discovery.

    eurosat.py     locate or download EuroSAT, list its tiles, load them as one dataset
    cache.py       decode every JPEG once into a uint8 .npy cache, and read it back
    splits.py      random 70/15/15, CoOp JSON and torchgeo list splits
    transforms.py  per-tile CPU transforms and DataLoaders (pipeline: loader); the backbone's mean/std
    device.py      tiles on the device, augmented a batch at a time (pipeline: fast)
    scenes.py      synthetic multi-object scenes with instance masks (object discovery)
"""
