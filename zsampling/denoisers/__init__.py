"""Adapters that turn models into the denoiser protocol (see ``base``).

``diffusers`` (SD, SDXL, PixArt pipelines) is imported lazily by
``zsampling.prepare``; ``analytic`` is the exact Gaussian-mixture model and
``demo`` the shipped digits model.
"""
