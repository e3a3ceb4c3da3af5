"""Application 1: slot-attention classification of EuroSAT tiles (train.ipynb, attention.ipynb).

    backbone.py         timm backbones: build (features_only), offline weights, output stride
    vit_variants.py     the clear-vit attention variants as timm backbones (slotvit_*)
    model.py            SlotClassifier = backbone -> 1x1 projection -> position encoding -> head
    losses.py           cross-entropy + the head's own terms (slotlib/heads/); what a collapsed head looks like
    experiment.py       one run's data, loaders, model and device (prepare)
    steps.py            one optimiser step, one epoch, one evaluation
    fit.py              the two stages, best checkpoint, resume, the test set once (train)
    frozen.py           a head on cached frozen features (stage 1 in seconds): how fast it starts
    explain.py          per-class attention maps, explanation metrics, predictions of a run
    attention_plots.py  heatmaps over tiles and the interactive explorer
    plots.py            data, learning curves, confusion matrix, per-class accuracy
    bench.py            `slotlib bench` (bench_reference.py: the reference's data path)
"""
