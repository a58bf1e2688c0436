"""Fitting and scoring the model's Pyro programs: the objectives (the ELBOs and the IWAE bound),
the importance-sampled log-likelihood, units, and the training steps (eager, traced, compiled,
CUDA graph) with the tracing machinery they share.

Imports ``models`` and ``runtime``.
"""
