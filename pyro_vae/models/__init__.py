"""The generative model and its guide: networks, priors, likelihoods and the VAE (``VAE``,
``VAEModel``, ``VAEGuide``), with the configuration that rebuilds one (``VAEConfig``).

Imports only ``runtime``.
"""
