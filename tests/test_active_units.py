"""Active units: a unit counts when Var_x E_q[z_u | x] > 0.01 (Burda et al. 2016)."""

from __future__ import annotations

import pytest
import torch

from pyro_vae import VAE
from pyro_vae.evaluation.active_units import active_units


def test_units_count_by_the_variance_of_their_posterior_means():
    vae = VAE(z_dim=4, hidden_dims=())  # a linear encoder: loc = W x + b
    net = vae.guide.encoder.net
    with torch.no_grad():  # posterior means chosen exactly
        for p in net.parameters():
            p.zero_()
        last = net[-1]
        last.weight[0, 0] = 1.0  # unit 0: loc = x_0, variance 0.25 on Bernoulli(1/2) pixels
        last.weight[1, 0] = 0.1  # unit 1: 0.1 x_0, variance 0.0025: under the threshold
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((4000, 784), 0.5), generator=g)
    result = active_units(vae, [(x, torch.zeros(4000, dtype=torch.long))])
    assert result["active"] == 1 and result["num_units"] == 4
    assert result["variances"][0] == pytest.approx(0.25, rel=0.05)


def test_a_collapsed_encoder_has_no_active_units_and_a_spread_one_has_all():
    vae = VAE(z_dim=5, hidden_dims=(16,))
    x = torch.bernoulli(torch.full((500, 784), 0.3), generator=torch.Generator().manual_seed(1))
    y = torch.zeros(500, dtype=torch.long)
    with torch.no_grad():
        last = vae.guide.encoder.net[-1]
        last.weight.zero_()  # every image gets the same posterior: collapsed
    assert active_units(vae, [(x, y)])["active"] == 0
    with torch.no_grad():
        last.weight.normal_(0, 3.0)  # large weights: posterior means spread over the data
    assert active_units(vae, [(x, y)])["active"] == 5
    with pytest.raises(ValueError, match="no images"):
        active_units(vae, [])
