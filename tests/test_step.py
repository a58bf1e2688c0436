"""The traced training step (step.py): the Pyro model and guide stay the one source of truth.

- The traced graph's loss and gradients equal Pyro's Trace_ELBO / TraceMeanField_ELBO on the
  same random draws, for every registered prior x likelihood x conditional.
- The replayed step reads nothing back to the host, and tracing leaves Pyro's and torch's
  validation settings as the user had them.
- A short run with the replayed graph trains exactly as the eager step does; a NaN stops
  training with one line and keeps the last good checkpoint.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, TrainConfig
from pyro_vae.inference.step_graph import trace_step
from pyro_vae.inference.steps import ELBOLoss, TracedStep, build_step
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.priors import PRIORS
from pyro_vae.runtime.distributed import World
from pyro_vae.training.schedules import make_optimizer

SEED = 3
REGISTRY = [
    (prior, likelihood, classes)
    for prior, likelihood, classes in itertools.product(
        sorted(PRIORS), sorted(LIKELIHOODS), (0, 10)
    )
    if classes or prior != "conditional"
]


def tiny(prior="normal", likelihood="bernoulli", num_classes=0, dtype=torch.float64) -> VAE:
    pyro.set_rng_seed(1)
    vae = VAE(
        z_dim=3,
        hidden_dims=(8,),
        prior=prior,
        likelihood=likelihood,
        num_classes=num_classes,
        prior_components=2,
    )
    return vae.to(dtype)


def batch(vae: VAE, n: int = 5, dtype=torch.float64):
    g = torch.Generator().manual_seed(11)
    gray = torch.rand(n, 784, generator=g, dtype=dtype)
    x = torch.bernoulli(gray, generator=g) if vae.likelihood.data_kind == "binary" else gray
    x = vae.likelihood.prepare(x) if vae.likelihood.data_kind != "binary" else x
    y = torch.arange(n) % 10 if vae.config.num_classes else None
    return x, y


def run_graph(gm, loss: ELBOLoss, x, y):
    params, buffers = list(loss.parameters()), list(loss.buffers())
    metrics, bad, *grads = gm(params, buffers, x, *([y] if y is not None else []))
    return metrics, bad, grads


@pytest.mark.parametrize("prior,likelihood,num_classes", REGISTRY)
@pytest.mark.parametrize("objective", ["trace", "meanfield"])
def test_traced_graph_equals_pyro_on_the_same_draws(prior, likelihood, num_classes, objective):
    vae = tiny(prior, likelihood, num_classes)
    x, y = batch(vae)
    loss = ELBOLoss(vae, objective, num_particles=2)
    gm = trace_step(loss, x, y)
    torch.manual_seed(SEED)
    metrics, bad, grads = run_graph(gm, loss, x, y)
    elbo_cls = TraceMeanField_ELBO if objective == "meanfield" else Trace_ELBO
    pyro_loss = elbo_cls(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    torch.manual_seed(SEED)
    expected = pyro_loss(vae.model, vae.guide)(x, y)
    expected_grads = torch.autograd.grad(expected, list(vae.parameters()))
    torch.testing.assert_close(metrics[0], expected.detach(), rtol=1e-10, atol=1e-8)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
    assert not bad
    # The graph holds no host read: no item()/tolist() became a graph node.
    assert not any("_local_scalar_dense" in str(n.target) for n in gm.graph.nodes)


@pytest.mark.parametrize("num_classes", [0, 10])
def test_traced_graph_equals_pyro_in_module_local_mode(num_classes):
    pyro.settings.set(module_local_params=True)  # before the modules are built
    test_traced_graph_equals_pyro_on_the_same_draws(
        "learned-normal", "gaussian", num_classes, "trace"
    )


@pytest.mark.parametrize("prior,num_classes", [("normal", 0), ("vamp", 0), ("conditional", 10)])
def test_traced_iwae_equals_renyi_elbo_alpha_zero(pyro_mode, prior, num_classes):
    vae = tiny(prior, "bernoulli", num_classes)
    x, y = batch(vae)
    loss = ELBOLoss(vae, "iwae", num_particles=4)
    gm = trace_step(loss, x, y)
    torch.manual_seed(SEED)
    metrics, _, grads = run_graph(gm, loss, x, y)
    renyi = RenyiELBO(alpha=0, num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    torch.manual_seed(SEED)
    # Pyro's own surrogate and backward (RenyiELBO has no ELBO-as-module form).
    expected = renyi.loss_and_grads(vae.model, vae.guide, x, y)
    expected_grads = [p.grad for p in vae.parameters()]
    assert metrics[0].item() == pytest.approx(expected, rel=1e-10)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-9)


def _forbid_host_reads(monkeypatch) -> list[str]:
    calls: list[str] = []

    def forbidden(name):
        def method(self, *args, **kwargs):
            calls.append(name)
            raise AssertionError(f"host read: Tensor.{name}")

        return method

    for name in ("item", "__bool__", "tolist", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))
    return calls


def _compiled_like_eager(vae: VAE, config: TrainConfig):
    """The compiled step with inductor drawing its random numbers as eager torch does
    (``fallback_random``). Every compiled step here is this one graph: one compile (~30 s
    cold), then inductor's cache."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        step = build_step(vae, make_optimizer(vae, config), config.objective(), "compiled", World())
        x, _ = batch(vae, n=16, dtype=torch.float32)
        with torch.random.fork_rng():
            step._build(x, None)  # traces and compiles now
    return step, x


@pytest.fixture(scope="module")
def compiled_step():
    pyro.settings.set(module_local_params=False)
    vae = tiny("learned-normal", "bernoulli", dtype=torch.float32)
    step, x = _compiled_like_eager(vae, TrainConfig(lr=1e-2))
    step(x, None)
    return vae, step, x


@pytest.mark.parametrize("kind", ["fx", "compiled"])
def test_no_host_read_in_50_replayed_steps(kind, request, monkeypatch):
    if kind == "compiled":  # built only here: the fx case needs no compile
        vae, step, x = request.getfixturevalue("compiled_step")
    else:
        vae = tiny("normal", "bernoulli", dtype=torch.float32)
        config = TrainConfig(lr=1e-2)
        step = build_step(vae, make_optimizer(vae, config), config.objective(), "fx", World())
        x, _ = batch(vae, n=16, dtype=torch.float32)
        step(x, None)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    calls = _forbid_host_reads(monkeypatch)
    sums = torch.zeros(3)
    for _ in range(50):
        metrics, bad = step(x, None)
        sums += metrics
    monkeypatch.undo()
    assert not calls
    assert not bad.item() and torch.isfinite(sums).all()
    assert any(not torch.equal(v, before[k]) for k, v in vae.state_dict().items())  # it trained


def test_negative_control_the_eager_step_reads_the_host(monkeypatch):
    # Pyro's validation, kept on in the eager step, reads tensors back: the patch sees it.
    vae = tiny("normal", "bernoulli", dtype=torch.float32)
    config = TrainConfig()
    step = build_step(vae, make_optimizer(vae, config), config.objective(), "eager", World())
    x, _ = batch(vae, n=16, dtype=torch.float32)
    calls = _forbid_host_reads(monkeypatch)
    with pytest.raises(AssertionError, match="host read"):
        step(x, None)
    assert calls


def test_compiled_step_equals_the_eager_step_with_inductor_drawing_as_eager():
    """Inductor draws its own random numbers; with fallback_random it uses torch's, and the
    compiled step's loss and update equal the eager step's on the same seed."""
    results = {}
    for kind in ("eager", "compiled"):
        vae = tiny("learned-normal", "bernoulli", dtype=torch.float32)
        config = TrainConfig(lr=1e-2)
        if kind == "compiled":
            step, x = _compiled_like_eager(vae, config)
        else:
            step = build_step(vae, make_optimizer(vae, config), config.objective(), kind, World())
            x, _ = batch(vae, n=16, dtype=torch.float32)
        torch.manual_seed(SEED)
        values = [step(x, None)[0] for _ in range(3)]
        results[kind] = (torch.stack(values), vae.state_dict())
    (a, sa), (b, sb) = results["eager"], results["compiled"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)


def test_last_smaller_batch_takes_the_eager_fallback():
    vae = tiny("normal", "bernoulli", dtype=torch.float32)
    config = TrainConfig()
    step = build_step(vae, make_optimizer(vae, config), config.objective(), "fx", World())
    assert isinstance(step, TracedStep)
    x, _ = batch(vae, n=16, dtype=torch.float32)
    step(x, None)
    shape = step.shape
    metrics, _ = step(x[:5], None, full=False)
    assert step.shape == shape and metrics.shape == (3,)  # no second graph was traced


def test_compiling_leaves_the_sessions_validation_on():
    """torch.compile's first use in a process switches torch.distributions validation off for
    the whole process; building the compiled step must give it back. A fresh process, so this
    is the first compile there."""
    code = (
        "import pyro, torch\n"
        "from pyro_vae import VAE, TrainConfig\n"
        "from pyro_vae.runtime.distributed import World\n"
        "from pyro_vae.training.schedules import make_optimizer\n"
        "from pyro_vae.inference.steps import build_step\n"
        "pyro.enable_validation(True)\n"
        "vae = VAE(z_dim=2, hidden_dims=(4,))\n"
        "c = TrainConfig()\n"
        "step = build_step(vae, make_optimizer(vae, c), c.objective(), 'compiled', World())\n"
        "step(torch.bernoulli(torch.full((4, 784), 0.3)), None)\n"
        "from torch._dynamo.eval_frame import TorchPatcher\n"
        "assert TorchPatcher.patch.cache_info().currsize == 1, 'dynamo was not used'\n"
        "assert torch.distributions.Distribution._validate_args is True\n"
        "from pyro.infer.util import is_validation_enabled\n"
        "assert is_validation_enabled()\n"
        "try:\n"
        "    pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, torch.full((4, 784), 0.5))\n"
        "except ValueError as e:\n"
        "    assert 'binarize' in str(e)\n"
        "else:\n"
        "    raise AssertionError('grayscale into bernoulli was not refused')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_negative_control_dynamo_switches_validation_off():
    # What the test above guards against: dynamo's patch, run directly, turns it off.
    from torch._dynamo.eval_frame import TorchPatcher

    before = torch.distributions.Distribution._validate_args
    try:
        torch.distributions.Distribution.set_default_validate_args(True)
        TorchPatcher.patch.__wrapped__()
        assert torch.distributions.Distribution._validate_args is False
    finally:
        torch.distributions.Distribution.set_default_validate_args(before)


# The conv network through the traced step: the same graph check, on images with channels.
CONV = [("normal", "bernoulli", 0, (1, 12, 10)), ("vamp", "bernoulli", 0, (1, 12, 10)),
        ("conditional", "bernoulli", 10, (1, 12, 10)),
        ("learned-normal", "discretized-logistic", 0, (3, 8, 8))]  # fmt: skip


def tiny_conv(prior, likelihood, num_classes, shape, dtype=torch.float64) -> VAE:
    pyro.set_rng_seed(1)
    vae = VAE(z_dim=3, network="conv", conv_channels=(4, 6), image_shape=shape, prior=prior,
              likelihood=likelihood, num_classes=num_classes, prior_components=2)  # fmt: skip
    return vae.to(dtype)


def conv_batch(vae: VAE, n: int = 5, dtype=torch.float64):
    g = torch.Generator().manual_seed(11)
    k = torch.randint(0, 256, (n, vae.config.x_dim), generator=g).to(dtype)
    x = torch.bernoulli(k / 255, generator=g) if vae.likelihood.data_kind == "binary" else k / 255
    y = torch.arange(n) % 10 if vae.config.num_classes else None
    return x, y


@pytest.mark.parametrize("prior,likelihood,num_classes,shape", CONV)
@pytest.mark.parametrize("objective", ["trace", "meanfield"])
def test_traced_conv_graph_equals_pyro_on_the_same_draws(
    prior, likelihood, num_classes, shape, objective
):
    vae = tiny_conv(prior, likelihood, num_classes, shape)
    x, y = conv_batch(vae)
    loss = ELBOLoss(vae, objective, num_particles=2)  # a particle dim through the conv layers
    gm = trace_step(loss, x, y)
    torch.manual_seed(SEED)
    metrics, bad, grads = run_graph(gm, loss, x, y)
    elbo_cls = TraceMeanField_ELBO if objective == "meanfield" else Trace_ELBO
    pyro_loss = elbo_cls(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    torch.manual_seed(SEED)
    expected = pyro_loss(vae.model, vae.guide)(x, y)
    expected_grads = torch.autograd.grad(expected, list(vae.parameters()))
    torch.testing.assert_close(metrics[0], expected.detach(), rtol=1e-10, atol=1e-8)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
    assert not bad
    assert any("convolution" in str(n.target) for n in gm.graph.nodes)  # the conv layers traced


def test_compiled_conv_step_equals_the_eager_step_with_inductor_drawing_as_eager():
    """The one compiled conv test: three steps of the compiled conv VAE against eager."""
    import torch._inductor.config as inductor_config

    results = {}
    for kind in ("eager", "compiled"):
        vae = tiny_conv("normal", "bernoulli", 0, (1, 12, 10), dtype=torch.float32)
        config = TrainConfig(lr=1e-2)
        x, _ = conv_batch(vae, n=8, dtype=torch.float32)
        with inductor_config.patch(fallback_random=True):
            step = build_step(vae, make_optimizer(vae, config), config.objective(), kind, World())
            if kind == "compiled":
                with torch.random.fork_rng():
                    step._build(x, None)
            torch.manual_seed(SEED)
            values = [step(x, None)[0] for _ in range(3)]
        results[kind] = (torch.stack(values), vae.state_dict())
    (a, sa), (b, sb) = results["eager"], results["compiled"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)
