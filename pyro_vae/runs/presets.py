"""Named protocols: every value a published setup fixes, set with one ``--preset`` flag.

A preset is a dict of ``VAEConfig`` and ``TrainConfig`` field values. ``pyro-vae train
--preset NAME`` starts from it; a flag the user types overrides that one value. The run
records the preset's name (``train_config.preset``) and, in ``config.json``, every value the
preset set and which of them were overridden.
"""

from __future__ import annotations

from typing import Any

# Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (ICLR 2016), MNIST, one
# stochastic layer (Table 1), as ../shared/references/iwae-protocol.md records it:
# 784-200-200-50 with tanh, Bernoulli output, N(0, I) prior; every minibatch binarized afresh;
# the first 59,600 training images (the last 400 held out); Adam with the paper's text's
# beta = (0.9, 0.999) (the authors' code has beta_1 = 0.99) and eps = 1e-4, batch 20; stage
# i = 0..7 runs 3^i passes at 1e-3 * 10^(-i/7), 3280 passes in all; the decoder's output bias
# starts at the logit of the mean training pixel. Differences from the authors' Theano code:
# torch's Adam (moments start at zero, not ones; eps inside the bias correction as torch has
# it), the encoder's scale is softplus(linear) + 1e-4 rather than exp(linear), and the exact
# rates 10^(-i/7) rather than the code's rounded ones.
IWAE_PAPER: dict[str, dict[str, Any]] = {
    "vae": {
        "z_dim": 50,
        "hidden_dims": (200, 200),
        "activation": "tanh",
        "prior": "normal",
        "likelihood": "bernoulli",
    },
    "train": {
        "batch_size": 20,
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-4,
        "lr_schedule": "staged",
        "epochs": 3280,
        "data_mode": "dynamic",
        "train_subset": 59600,
        "decoder_bias": "data-mean",
    },
}

# The same paper's second architecture, two stochastic layers (Table 1's lower half), under the
# one-layer protocol above, as the authors' code (experiments.py, --layers 2) builds it:
# q(z1 | x) 784-200-200-100, q(z2 | z1) 100-100-100-50, p(z1 | z2) 50-100-100-100,
# p(x | z1) 100-200-200-784, tanh everywhere, z2 ~ N(0, I). As for one layer, every Gaussian's
# scale is softplus(linear) + 1e-4 where the authors take exp(linear).
IWAE_PAPER_2LAYER: dict[str, dict[str, Any]] = {
    "vae": {
        **{k: v for k, v in IWAE_PAPER["vae"].items() if k != "z_dim"},
        "latent_dims": (100, 50),
        "latent_hidden_dims": (100, 100),
    },
    "train": dict(IWAE_PAPER["train"]),
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "iwae-paper": IWAE_PAPER,
    "iwae-paper-2layer": IWAE_PAPER_2LAYER,
}


def preset_values(name: str) -> dict[str, dict[str, Any]]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
