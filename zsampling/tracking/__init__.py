"""Experiment-tracking integrations (optional dependencies, imported lazily).

``zsampling.tracking.wandb.WandbRecorder`` logs runs to Weights & Biases;
importing this package (or zsampling) never imports ``wandb`` itself.
"""
