"""pyro-vae: the VAE and the conditional VAE as Pyro programs, fitted by SVI."""

from .config import TrainConfig, VAEConfig
from .elbo import ELBOTerms, elbo_terms
from .model import VAE, VAEGuide, VAEModel
from .runs import load_vae
from .training import train

__all__ = [
    "VAE",
    "VAEConfig",
    "TrainConfig",
    "VAEModel",
    "VAEGuide",
    "ELBOTerms",
    "elbo_terms",
    "load_vae",
    "train",
]
__version__ = "0.1.0"
