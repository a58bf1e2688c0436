"""beta, the KL weight, as a scale on the latent sites (models/vae.py's ``KLWeight``).

- Classic Pyro SVI gets the beta-VAE from the model alone: Trace_ELBO and TraceMeanField_ELBO
  on ``vae.model``/``vae.guide`` with weight beta are E_q log p(x|z) - beta KL on the same draws.
- Every library objective weighs it as its Pyro equivalent does, and reports the unweighted
  terms (what the metrics, the test -ELBO and the NLL use).
- In the traced graph the weight is an input: changed after tracing, the replayed loss follows
  it without a new trace.
- A weight of 0 (which Pyro's scale refuses) is one line saying what to do.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE
from pyro_vae.inference.loglik import log_weights_chunk
from pyro_vae.inference.objectives import OBJECTIVES, make_objective
from pyro_vae.inference.step_graph import split_parameters, trace_step
from pyro_vae.inference.steps import ELBOLoss

SEED = 12
BETA = 3.5


def tiny(prior: str = "normal", kl_weight: float = 1.0) -> VAE:
    pyro.set_rng_seed(3)
    vae = VAE(z_dim=3, hidden_dims=(8,), prior=prior, prior_components=2, kl_weight=kl_weight)
    return vae.double()


def batch(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.bernoulli(torch.rand(n, 784, generator=g, dtype=torch.float64), generator=g)


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO])
def test_classic_pyro_elbos_get_the_beta_vae_from_the_model_alone(elbo, pyro_mode):
    vae, x = tiny(), batch()
    torch.manual_seed(SEED)
    plain = make_objective("meanfield" if elbo is TraceMeanField_ELBO else "trace")
    t = plain.terms(vae.model, vae.guide, x)
    vae.kl_weight = BETA
    torch.manual_seed(SEED)
    weighted = elbo().differentiable_loss(vae.model, vae.guide, x)
    expected = -(t.log_lik - BETA * t.kl).sum()
    torch.testing.assert_close(weighted, expected, rtol=1e-10, atol=1e-8)
    # Negative control: at weight 1 Pyro's loss is the plain -ELBO, not the weighted one.
    vae.kl_weight = 1.0
    torch.manual_seed(SEED)
    assert not torch.allclose(elbo().differentiable_loss(vae.model, vae.guide, x), expected)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_weighs_beta_as_pyro_and_reports_unweighted_terms(name, pyro_mode):
    vae, x = tiny("vamp", kl_weight=BETA), batch()
    objective = make_objective(name, num_particles=3)
    torch.manual_seed(SEED)
    expected = objective.pyro_equivalent().loss_and_grads(vae.model, vae.guide, x)
    torch.manual_seed(SEED)
    weighted = objective.terms(vae.model, vae.guide, x)
    assert weighted.loss.item() == pytest.approx(expected, rel=1e-10)
    vae.kl_weight = 1.0
    torch.manual_seed(SEED)
    plain = objective.terms(vae.model, vae.guide, x)
    torch.testing.assert_close(weighted.log_lik, plain.log_lik)
    torch.testing.assert_close(weighted.kl, plain.kl)  # the metrics' KL: unweighted
    assert not torch.allclose(weighted.loss, plain.loss)


def test_the_nll_ignores_the_weight():
    vae, x = tiny(kl_weight=BETA), batch()
    torch.manual_seed(SEED)
    weighted = log_weights_chunk(vae.model, vae.guide, x, None, num_samples=4)
    vae.kl_weight = 1.0
    torch.manual_seed(SEED)
    torch.testing.assert_close(
        weighted, log_weights_chunk(vae.model, vae.guide, x, None, num_samples=4)
    )


def test_the_traced_graph_reads_the_weight_as_an_input():
    vae, x = tiny(), batch()
    loss = ELBOLoss(vae, "trace")
    gm = trace_step(loss, x, None)  # traced at weight 1
    trainable, constant = split_parameters(loss)
    assert any(c is vae.model.kl_weight.value for c in constant)
    for beta in (0.25, BETA):
        vae.kl_weight = beta
        torch.manual_seed(SEED)
        expected = loss(x, None)[0]
        torch.manual_seed(SEED)
        with torch.no_grad():
            got = gm(trainable, constant, x)[0][0]
        torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=1e-8)


def test_a_zero_weight_is_one_line_saying_what_to_do():
    vae = tiny()
    with pytest.raises(ValueError, match="must be positive.*a warm-up starts just above 0"):
        vae.kl_weight = 0.0
    with pytest.raises(ValueError, match="must be positive"):
        VAE(z_dim=2, hidden_dims=(4,), kl_weight=-1.0)
    assert vae.kl_weight == 1.0  # unchanged
    assert "model.kl_weight.value" not in vae.state_dict()  # not saved: the run sets it


def _run(tmp_path, out: str, epochs: int, **kw):
    from synthetic import write_tensor_file

    from pyro_vae import TrainConfig

    data = tmp_path / "data.pt"
    if not data.exists():
        write_tensor_file(data)  # 90 images of 16 x 20: 81 train (3 batches of 32), 9 test
    return TrainConfig(
        dataset=f"tensor:{data}", out=str(tmp_path / out), epochs=epochs, batch_size=32,
        step="eager", device="cpu", seed=2, **kw,
    )  # fmt: skip


QUIET = {"progress": False, "write_figures": False, "log": lambda line: None}


def test_a_warmup_run_weighs_every_step_and_resumes_exactly(tmp_path):
    from pyro_vae import VAEConfig, train
    from pyro_vae.runs.checkpoint import load_checkpoint

    small = VAEConfig(x_dim=320, z_dim=3, hidden_dims=(16,))
    warm = {"kl_weight": 2.0, "kl_warmup": 7}  # 3 steps an epoch: the rise spans 3 epochs
    straight = train(small, _run(tmp_path, "straight", 4, **warm), **QUIET)
    assert [m["kl_weight"] for m in straight] == pytest.approx([6 / 7, 12 / 7, 2.0, 2.0])
    # The weighted objective beside the unweighted ELBO: they part while the weight is not 1.
    assert all(abs(m["train_loss"] - m["train_neg_elbo"]) > 1e-3 for m in straight)
    train(small, _run(tmp_path, "resumed", 1, **warm), **QUIET)
    resumed = train(None, _run(tmp_path, "resumed", 4, **warm), resume=True, **QUIET)
    timing = {"seconds", "eval_seconds", "trace_seconds"}
    drop = [{k: v for k, v in m.items() if k not in timing} for m in resumed]
    assert drop == [{k: v for k, v in m.items() if k not in timing} for m in straight]
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # Negative control: without the warm-up the first epoch trains another objective.
    plain = train(small, _run(tmp_path, "plain", 1, kl_weight=2.0), **QUIET)
    assert plain[0]["kl_weight"] == 2.0 and plain[0]["train_loss"] != straight[0]["train_loss"]
