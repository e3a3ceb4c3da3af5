"""Application 2: unsupervised object discovery with Locatello's slot-attention autoencoder
(object_discovery.ipynb). It shares slotlib.layers.slot_attention with the classifier and
nothing of the classifier's training.

    model.py    SlotAutoEncoder: CNN encoder, slot attention, spatial-broadcast decoder
    metrics.py  ARI and FG-ARI, the alpha and posterior mask readouts, evaluation
    fit.py      the training loop, run files, the black-background control
    resume.py   last.pt: an interrupted run resumes to the uninterrupted result
    plots.py    figures and the slot browser widget
"""
