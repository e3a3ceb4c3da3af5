"""slotlib: slot-attention image classification (SCOUTER, Locatello) on timm backbones.

The folders follow the data flow: params -> config -> data + model -> train -> cell folder -> report.
Two applications (classification, object discovery) share the slot-attention module and the
run-folder code, and import nothing of each other.

    config/            params file -> validated, frozen config; cell ids
      fields.py          ConfigError; one parameter's default, help, checking and coercion
      classify.py        Config = DataConfig + ModelConfig + TrainConfig + the heads' own (train.ipynb)
      discover.py        DiscoveryConfig (object_discovery.ipynb)
      params_file.py     base / grid / seeds / notebook -> cells with ids; --set; notebook namespace
    data/              tiles in, batches out
      eurosat.py         locate or download EuroSAT, list its tiles, load them as one dataset
      cache.py           decode every JPEG once into a uint8 .npy cache
      splits.py          random 70/15/15, CoOp JSON and torchgeo list splits
      transforms.py      per-tile CPU transforms and DataLoaders (pipeline: loader); mean/std
      device.py          tiles on the device, augmented a batch at a time (pipeline: fast)
      scenes.py          synthetic multi-object scenes (object discovery)
    layers/            building blocks both applications share
      slot_attention.py  SlotAttention (Locatello), GaussianSlots
    heads/             classification heads, one file each, registered by name (`head:`)
      registry.py        Head, register_head: what a head's file defines
      scouter.py         SCOUTER: sigmoid slot attention, area loss (`head: scouter`)
      slot.py            Locatello slot attention as a classifier (`head: slot`)
      linear.py          the linear baseline and its class activation map (`head: linear`)
    classify/          application 1: EuroSAT classification (train.ipynb, attention.ipynb)
      backbone.py        timm backbones (features_only), offline weights, output stride
      model.py           SlotClassifier = backbone -> projection -> position encoding -> head
      losses.py          cross-entropy + the head's own terms; a collapsed head
      experiment.py      one run's data, loaders, model, device (prepare)
      steps.py           one step, one epoch, one evaluation
      fit.py             two stages, best checkpoint, resume, test once (train)
      frozen.py          a head on cached frozen features: how fast it starts
      explain.py         per-class attention maps, explanation metrics, predictions
      faithfulness.py    the explanation benchmark: head maps against Grad-CAM and chance
      explain_cells.py   `slotlib explain`: the benchmark over finished cells, written into each
      attention_plots.py heatmaps over tiles, the interactive explorer
      plots.py           data, learning curves, confusion matrix, per-class accuracy
      bench.py           `slotlib bench` (bench_reference.py, bench_format.py)
    discover/          application 2: object discovery (object_discovery.ipynb)
      model.py           SlotAutoEncoder: encoder, slot attention, spatial-broadcast decoder
      metrics.py         ARI, FG-ARI, mask readouts, evaluation
      fit.py             training loop, run files, the black-background control
      plots.py           figures, the slot browser widget
    runs/              cell folders and grids, shared by both applications
      files.py           writing a cell folder atomically, one writer at a time
      folder.py          reading a cell folder (status, report, resume, grid)
      grid.py            params file -> cells -> one papermill run per cell
      report.py          the grid's table and HTML report
      discovery_report.py  an object-discovery grid's report: FG-ARI, minutes, mask readouts (no torch)
      explanations.py    the explanation benchmark's files and tables (no torch)
      explanation_figures.py  its figures: head map beside Grad-CAM, mosaics (no torch)
    runtime.py         device, precision, seeds, versions; NonFiniteLossError
    cli.py             `slotlib describe | train | grid | status | report | explain | bench`
"""

__version__ = "0.1.0"

# slotlib.config imports slotlib.heads, whose files import slotlib.config.fields: loading config first
# makes every import order work (`from slotlib.heads.scouter import ...` on its own included).
from . import config as _config  # noqa: E402,F401
