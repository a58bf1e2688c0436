"""Scoring a trained model: the test ELBO, the estimators compared, the digit classifier and the
conditional VAE's label accuracy.

Imports ``runs`` and the layers below.
"""
