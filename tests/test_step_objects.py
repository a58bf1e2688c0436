"""The traced steps on the objects users bring, not only the registry's names.

What a user relies on: every model the eager step trains, the traced steps train the same way,
or refuse it in one line before step 1.

- The README's custom objects (Pyro-distribution priors, nested ``Independent``,
  ``TransformedDistribution``, ``MixtureSameFamily``; a callable and a module prior; a
  likelihood as a callable and as a class; frozen parameters): the fx graph's loss and
  gradients equal Pyro's Trace_ELBO on the same draws, in both of Pyro's modes.
- The compiled graph (inductor, its own random numbers) gives the eager step's distribution of
  losses for every registered prior, every registered likelihood, the CVAE and the custom
  objects, compiled together as one graph (one compile for the suite).
- What cannot be traced: an explicit traced step refuses it in one line naming the user's
  function and suggesting ``--step eager``; ``auto`` says so in one line and trains eagerly; a
  value frozen by tracing (Python's ``random``) is caught by the build-time check, which is
  shown to be needed (the bare graph does differ from eager).
- Frozen parameters stay frozen in every step kind, and nothing else stays frozen.
"""

from __future__ import annotations

import random
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_vae import VAE, TrainConfig
from pyro_vae.inference.step_graph import (
    UntraceableError,
    _differs,
    split_parameters,
    trace_step,
)
from pyro_vae.inference.steps import ELBOLoss, FXStep, build_step
from pyro_vae.inference.tracing import compile_graph, trace_forward
from pyro_vae.models.likelihoods import LIKELIHOODS, Likelihood
from pyro_vae.models.priors import PRIORS
from pyro_vae.runtime.distributed import World
from pyro_vae.training.schedules import make_optimizer

Z = 3
SEED = 5
# Pyro's own warning when a module's frozen parameter meets the param store (default mode).
FROZEN_WARNING = "ignore:.*was not registered in the param store"


class ScaledNormalPrior(nn.Module):
    """A user's prior module with a parameter of its own: N(0, exp(log_scale)^2 I)."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(Z))

    def forward(self, y=None):
        return dist.Normal(torch.zeros_like(self.log_scale), self.log_scale.exp()).to_event(1)


class NoisyBernoulli(Likelihood):
    """The README's likelihood class: Bernoulli pixels flipped with probability noise."""

    data_kind = "binary"
    name = "noisy-bernoulli"

    def forward(self, out):
        return self.pixels(dist.Bernoulli(probs=0.98 * torch.sigmoid(out) + 0.01))


def wide_normal(y=None):
    return dist.Normal(torch.zeros(Z), torch.full((Z,), 2.0)).to_event(1)


def bernoulli_logits(out):
    return dist.Bernoulli(logits=out).to_event(1)


bernoulli_logits.data_kind = "binary"  # what the data pipeline reads off a callable


def _freeze(vae: VAE) -> VAE:
    vae.guide.encoder.net[0].weight.requires_grad_(False)
    vae.model.prior.loc.requires_grad_(False)
    return vae


def custom(name: str) -> dict:
    """VAE keyword arguments of each custom case (built fresh: distributions hold tensors)."""
    zeros, ones = torch.zeros(Z), torch.ones(Z)
    two = torch.stack([-ones, ones])
    return {
        "studentt": dict(prior=dist.StudentT(4.0, zeros, ones).to_event(1)),
        "nested-independent": dict(
            prior=dist.Independent(dist.Independent(dist.Laplace(zeros, ones), 0), 1)
        ),
        "transformed": dict(
            prior=dist.TransformedDistribution(
                dist.Normal(zeros, ones), [dist.transforms.AffineTransform(0.5, 2.0)]
            ).to_event(1)
        ),
        "mixture": dict(
            prior=dist.MixtureSameFamily(
                dist.Categorical(probs=torch.tensor([0.3, 0.7])), dist.Normal(two, 1.0).to_event(1)
            )
        ),
        "callable-prior": dict(prior=wide_normal),
        "module-prior": dict(prior=ScaledNormalPrior()),
        "callable-likelihood": dict(likelihood=bernoulli_logits),
        "likelihood-class": dict(likelihood=NoisyBernoulli()),
        "frozen": dict(prior="learned-normal"),
    }[name]


CUSTOM = [
    "studentt",
    "nested-independent",
    "transformed",
    "mixture",
    "callable-prior",
    "module-prior",
    "callable-likelihood",
    "likelihood-class",
    "frozen",
]


def build(case: str | tuple, num_classes: int = 0, dtype=torch.float64) -> VAE:
    """A tiny VAE of a custom case (a name) or a registry case (prior, likelihood, classes)."""
    pyro.set_rng_seed(1)
    if isinstance(case, tuple):
        prior, likelihood, num_classes = case
        kwargs = dict(prior=prior, likelihood=likelihood)
    else:
        kwargs = custom(case)
    vae = VAE(z_dim=Z, hidden_dims=(8,), num_classes=num_classes, prior_components=2, **kwargs)
    vae = vae.to(dtype)
    return _freeze(vae) if case == "frozen" else vae


def data(vae: VAE, n: int = 5, dtype=torch.float64):
    g = torch.Generator().manual_seed(11)
    gray = torch.rand(n, 784, generator=g, dtype=dtype)
    lik = vae.likelihood
    x = torch.bernoulli(gray, generator=g) if lik.data_kind == "binary" else lik.prepare(gray)
    y = torch.arange(n) % 10 if vae.config.num_classes else None
    return x, y


@pytest.mark.filterwarnings(FROZEN_WARNING)
@pytest.mark.parametrize("case", CUSTOM)
def test_fx_graph_equals_pyro_on_custom_objects(case, pyro_mode):
    vae = build(case)
    x, y = data(vae)
    loss = ELBOLoss(vae, "trace", num_particles=2)
    torch.manual_seed(SEED)
    expected = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)(
        vae.model, vae.guide
    )(x, y)
    # After Pyro's run: in the default mode the param store may have set requires_grad.
    trainable, constant = split_parameters(loss)
    expected_grads = torch.autograd.grad(expected, trainable)
    gm = trace_step(loss, x, y)
    torch.manual_seed(SEED)
    with torch.no_grad():
        metrics, bad, *grads = gm(trainable, constant, x)
    torch.testing.assert_close(metrics[0], expected.detach(), rtol=1e-10, atol=1e-8)
    assert len(grads) == len(expected_grads)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
    assert not bad
    if case == "frozen":
        frozen = {id(vae.guide.encoder.net[0].weight)}
        assert frozen.isdisjoint(id(p) for p in trainable)


# The compiled check: each registered prior and likelihood once, the CVAE, and the custom
# objects whose operations differ from those (a module prior, a callable Bernoulli and frozen
# parameters compile to the registry's own operations; the fx tests above cover them). One
# graph of all of them: compiling costs per operation, so one compile for the suite.
COMPILED_CASES = (
    [(p, "bernoulli", 0) for p in sorted(PRIORS) if p != "conditional"]
    + [("normal", lik, 0) for lik in sorted(LIKELIHOODS) if lik != "bernoulli"]
    + [("conditional", "gaussian", 10)]
    + ["studentt", "nested-independent", "transformed", "mixture", "callable-prior"]
    + ["likelihood-class"]
)


class LossMatrix(nn.Module):
    """Every case's -ELBO on the same gray images (each turned into its likelihood's data),
    as one vector: one graph, so the suite compiles once."""

    def __init__(self, cases: list, shift: float = 0.0) -> None:
        super().__init__()
        self.losses = nn.ModuleList(ELBOLoss(build(c, dtype=torch.float32)) for c in cases)
        with torch.no_grad():  # the negative control: a slightly different decoder
            for loss in self.losses:
                loss.vae.model.decoder.net[-1].bias.add_(shift)

    def forward(self, gray: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = []
        for loss in self.losses:
            lik = loss.vae.likelihood
            x = (gray > 0.5).to(gray.dtype) if lik.data_kind == "binary" else lik.prepare(gray)
            out.append(loss(x, y if loss.vae.config.num_classes else None)[0])
        return torch.stack(out)


def _z_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per case, the difference of the two sample means in standard errors."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return (a.mean(0) - b.mean(0)).abs() / se


# 16 cases at 5 sigma: a wrong distribution shifts the mean by many standard errors, and 16
# correct ones pass together with probability 1 - 16 * 6e-7 (fixed seeds: the same every run).
Z_LIMIT = 5.0
DRAWS = 200


@pytest.mark.filterwarnings(FROZEN_WARNING)
def test_compiled_graph_gives_the_eager_distribution_of_losses():
    pyro.settings.set(module_local_params=True)
    matrix = LossMatrix(COMPILED_CASES)
    g = torch.Generator().manual_seed(3)
    gray, y = torch.rand(8, 784, generator=g), torch.arange(8) % 10
    params, buffers = list(matrix.parameters()), list(matrix.buffers())
    compiled = compile_graph(trace_forward(matrix, gray, y), params, buffers, gray, y)
    torch.manual_seed(SEED)
    got = torch.stack([compiled(params, buffers, gray, y) for _ in range(DRAWS)])
    torch.manual_seed(SEED + 1)
    with torch.no_grad():
        eager = torch.stack([matrix(gray, y) for _ in range(DRAWS)])
    assert torch.isfinite(got).all()
    z = _z_scores(got, eager)
    worst = int(z.argmax())
    assert z.max() < Z_LIMIT, f"{COMPILED_CASES[worst]}: {z[worst]:.1f} standard errors"
    # Negative control: the same test tells a decoder whose logits are 0.5 off apart.
    with torch.no_grad():
        shifted = LossMatrix(COMPILED_CASES[:1], shift=0.5)
        other = torch.stack([shifted(gray, y) for _ in range(DRAWS)])
    assert _z_scores(got[:, :1], other).item() > Z_LIMIT


def _step(vae: VAE, kind: str, auto: bool = False, log=None):
    config = TrainConfig(lr=1e-2)
    return build_step(
        vae, make_optimizer(vae, config), config.objective(), kind, World(), log=log, auto=auto
    )


def data_dependent_likelihood(out):
    if out.mean() > 0:  # a tensor's value decides Python's branch: cannot live in a graph
        out = out * 1.0
    return dist.Bernoulli(logits=out).to_event(1)


data_dependent_likelihood.data_kind = "binary"


def python_random_prior(y=None):
    # Python's random: tracing records one draw as a constant, eager draws afresh.
    scale = 0.5 + 2.0 * random.random()
    return dist.Normal(torch.zeros(Z), torch.full((Z,), scale)).to_event(1)


@pytest.mark.parametrize("kind", ["fx", "compiled"])
def test_an_explicit_traced_step_refuses_data_dependent_python_in_one_line(kind):
    vae = build("studentt", dtype=torch.float32)
    vae.model.likelihood = VAE(likelihood=data_dependent_likelihood).likelihood
    x, _ = data(vae, dtype=torch.float32)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    step = _step(vae, kind)
    with pytest.raises(UntraceableError) as e:
        step(x, None)
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    assert re.search(r"in data_dependent_likelihood \(test_step_objects\.py:\d+\)", message)
    assert "--step eager" in message
    # Refused before step 1: nothing was trained.
    assert all(torch.equal(v, before[k]) for k, v in vae.state_dict().items())


def test_auto_says_so_in_one_line_and_trains_eagerly():
    vae = VAE(z_dim=Z, hidden_dims=(8,), likelihood=data_dependent_likelihood)
    x, _ = data(vae, dtype=torch.float32)
    lines: list[str] = []
    step = _step(vae, "compiled", auto=True, log=lines.append)
    before = vae.guide.encoder.net[0].weight.clone()
    for _ in range(3):
        metrics, bad = step(x, None)
    assert step.kind == "eager" and torch.isfinite(metrics).all() and not bad
    assert not torch.equal(before, vae.guide.encoder.net[0].weight)  # it trained
    notes = [line for line in lines if line.startswith("note:")]
    assert len(notes) == 1 and "data_dependent_likelihood" in notes[0]
    assert "using the eager step" in notes[0] and "\n" not in notes[0]


def test_a_value_frozen_by_tracing_is_caught_before_step_1():
    vae = VAE(z_dim=Z, hidden_dims=(8,), prior=python_random_prior)
    x, _ = data(vae, dtype=torch.float32)
    with pytest.raises(UntraceableError, match="on the same draws.*--step eager"):
        _step(vae, "fx")(x, None)
    # Negative control: the bare graph traces and runs, but does differ from eager.
    loss = ELBOLoss(vae)
    gm = trace_step(loss, x, None)
    trainable, constant = split_parameters(loss)
    random.seed(0)
    torch.manual_seed(SEED)
    expected = loss(x, None)[0]
    torch.manual_seed(SEED)
    with torch.no_grad():
        got = gm(trainable, constant, x)[0][0]
    assert _differs(got, expected.detach())  # by the build-time check's own criterion


def test_every_rank_falls_back_when_one_cannot_trace():
    # An all-reduce that reports another rank's failure: this rank falls back too.
    vae = VAE(z_dim=Z, hidden_dims=(8,))
    x, _ = data(vae, dtype=torch.float32)
    loss = ELBOLoss(vae)
    optimizer = make_optimizer(vae, TrainConfig())
    step = FXStep(loss, optimizer, all_reduce=lambda t: t.add_(1.0), auto=True)
    step(x, None)
    assert step.kind == "eager" and "another process" in step.untraceable
    # Negative control: an all-reduce from healthy ranks keeps the traced step.
    healthy = FXStep(loss, optimizer, all_reduce=lambda t: t, auto=True)
    healthy(x, None)
    assert healthy.kind == "fx"


@pytest.mark.filterwarnings(FROZEN_WARNING)
def test_frozen_parameters_stay_frozen_and_the_rest_trains_alike(pyro_mode):
    changed = {}
    for kind in ("eager", "fx"):
        vae = build("frozen", dtype=torch.float32)
        x, _ = data(vae, dtype=torch.float32)
        before = {k: v.clone() for k, v in vae.state_dict().items()}
        step = _step(vae, kind)
        for _ in range(3):
            step(x, None)
        after = vae.state_dict()
        changed[kind] = {k for k in after if not torch.equal(after[k], before[k])}
        assert not vae.guide.encoder.net[0].weight.requires_grad
    assert changed["fx"] == changed["eager"]  # the traced step trains what eager trains
    assert "guide.encoder.net.0.weight" not in changed["fx"]
    assert {"guide.encoder.net.0.bias", "model.decoder.net.0.weight"} <= changed["fx"]
    if pyro_mode == "module-local":
        assert "model.prior.loc" not in changed["fx"]
