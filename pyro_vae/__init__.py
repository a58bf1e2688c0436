"""pyro-vae: the VAE and the conditional VAE as Pyro programs, fitted by SVI (and your own
Pyro model and guide, through ``UserModel``).

The public names live here; the package is layered (lower layers never import higher ones):
``runtime`` < ``models`` < ``inference`` < ``data`` < ``runs`` < ``evaluation`` < ``figures``
< ``training`` < ``app`` < ``cli``. docs/architecture.md says what each layer owns.
"""

from pyro_vae.data.images import ImageData
from pyro_vae.data.torchvision_data import default_data_dir
from pyro_vae.figures.run_figures import plot_run
from pyro_vae.inference.loglik import evaluate_log_likelihood
from pyro_vae.inference.objectives import ELBOTerms, elbo_terms
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.likelihoods import LIKELIHOODS, Likelihood
from pyro_vae.models.priors import PRIORS
from pyro_vae.models.user_model import UserModel
from pyro_vae.models.vae import VAE, VAEGuide, VAEModel
from pyro_vae.runs.options import TrainConfig
from pyro_vae.runs.records import load_run, load_vae
from pyro_vae.runtime.rng import seeded
from pyro_vae.training.loop import train

__all__ = [
    "VAE",
    "VAEConfig",
    "TrainConfig",
    "VAEModel",
    "VAEGuide",
    "UserModel",
    "ELBOTerms",
    "elbo_terms",
    "evaluate_log_likelihood",
    "LIKELIHOODS",
    "Likelihood",
    "PRIORS",
    "ImageData",
    "default_data_dir",
    "load_run",
    "load_vae",
    "plot_run",
    "seeded",
    "train",
]
__version__ = "0.1.0"
