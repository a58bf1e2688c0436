"""The semi-supervised VAE (M2, Kingma et al. 2014): the conditional VAE's model and guide with
q(y | x) in the guide, the label a site observed where it is given and summed out where it is
missing (y = -1), labelled and unlabelled images in one batch.

What a user relies on:

- the sites: "y_observed" where y >= 0, "y_unobserved" (drawn by the guide) where y = -1,
  "y" the interleaved labels; y=None means every label is missing;
- classic Pyro, TraceEnum_ELBO on config_enumerate(guide, "parallel"), trains the model and
  guide as they are, in both of Pyro's modes;
- the enumerated bound of an unlabelled image is sum_y q(y | x) L(x, y) + H(q(y | x)), the
  labelled bounds weighted by the classifier (a statistical test against the labelled
  bounds, with a negative control);
- EnumELBO with the classification term alpha * -log q(y | x) is TraceEnum_ELBO plus Pyro's
  auxiliary-loss recipe on the same draws, and so is its traced graph (fx); the compiled
  step trains as the eager step does, and the CUDA graph as the traced one;
- the conditional VAE without a classifier is what it was (parameters, their order, sites);
- bad labels get one-line errors, and the accuracy and confusion matrix count what q(y | x)
  said. (tests/test_cli.py holds the command line's bad inputs.)
"""

from __future__ import annotations

import hashlib
import json
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate

from pyro_vae import VAE, TrainConfig
from pyro_vae.app.explorer import Explorer
from pyro_vae.cli.main import main
from pyro_vae.evaluation.semi_supervised import format_accuracy, label_accuracy
from pyro_vae.inference.objectives import EnumELBO, semi_supervised_alpha, walk
from pyro_vae.inference.step_graph import trace_step
from pyro_vae.inference.steps import ELBOLoss, build_step
from pyro_vae.runtime.distributed import World
from pyro_vae.training.schedules import make_optimizer

SEED = 5
C = 10


def m2(classifier: str = "mlp", x_dim: int = 784, **kw) -> VAE:
    pyro.set_rng_seed(3)
    return VAE(
        z_dim=3,
        hidden_dims=(8,),
        num_classes=C,
        classifier=classifier,
        classifier_dims=(8,),
        x_dim=x_dim,
        **kw,
    )


def mixed(n: int = 6, x_dim: int = 784, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """n binary images; the even ones labelled, the odd ones not (y = -1)."""
    g = torch.Generator().manual_seed(4)
    x = torch.bernoulli(torch.rand(n, x_dim, generator=g, dtype=dtype), generator=g)
    y = torch.arange(n) % C
    y[1::2] = -1
    return x, y


class PlainEncoder(torch.nn.Module):
    """A user's encoder keeping the contract only: x [B, C, H, W], y [B, K] -> loc, scale."""

    def __init__(self, x_dim: int, z_dim: int) -> None:
        super().__init__()
        self.net = torch.nn.Linear(x_dim + C, 2 * z_dim)

    def forward(self, x, y_onehot):
        assert x.dim() == 4 and y_onehot.dim() == 2  # what the contract promises
        loc, raw = self.net(torch.cat([x.flatten(1), y_onehot], -1)).chunk(2, -1)
        return loc, torch.nn.functional.softplus(raw) + 1e-3


class PlainDecoder(torch.nn.Module):
    """A user's decoder keeping the contract only: z [..., B, d], y [B, K] -> [..., B, D]."""

    def __init__(self, z_dim: int, x_dim: int) -> None:
        super().__init__()
        self.net = torch.nn.Linear(z_dim + C, x_dim)

    def forward(self, z, y_onehot):
        assert y_onehot.dim() == 2  # what the contract promises
        return self.net(torch.cat([z, y_onehot.expand(*z.shape[:-1], C)], -1))


# The semi-supervised VAE with each kind of network, classifier, image and latent stack:
# name -> (VAE keywords, pixels per image).
VARIANTS = {
    "mlp": ({"classifier": "mlp"}, 784),
    "conv-classifier": ({"classifier": "conv"}, 784),
    "stacked": ({"classifier": "mlp", "latent_dims": (4, 3), "latent_hidden_dims": (8,)}, 784),
    "conv-network": ({"classifier": "conv", "network": "conv", "conv_channels": (4, 8)}, 784),
    "colour": ({"classifier": "conv", "image_shape": (3, 14, 13), "x_dim": None}, 546),
    "user-networks": ({"classifier": "mlp"}, 784),
}


def variant(name: str) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """A float64 semi-supervised VAE of that variant and a mixed batch for it."""
    kw, x_dim = VARIANTS[name]
    if name == "user-networks":
        torch.manual_seed(3)
        kw = {**kw, "encoder": PlainEncoder(x_dim, 3), "decoder": PlainDecoder(3, x_dim)}
    vae = m2(**{"x_dim": x_dim, **kw}).double()
    x, y = mixed(x_dim=x_dim, dtype=torch.float64)
    return vae, x, y


@pytest.fixture
def float64_default():
    """TraceEnum_ELBO adds the log-density of obs_mask's Delta site, which has the default
    dtype, to the model's: a float64 model needs float64 as the default."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def traces(vae: VAE, x, y):
    guide = poutine.trace(vae.guide).get_trace(x, y)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, y)
    return model, guide


def test_the_label_is_observed_where_given_and_drawn_where_missing(pyro_mode):
    vae = m2()
    x, y = mixed()
    model, guide = traces(vae, x, y)
    given = y >= 0
    obs, latent, labels = model.nodes["y_observed"], model.nodes["y_unobserved"], model.nodes["y"]
    assert obs["is_observed"] and torch.equal(obs["mask"], given)
    assert not latent["is_observed"] and torch.equal(latent["mask"], ~given)
    assert torch.equal(guide.nodes["y_unobserved"]["mask"], ~given)
    drawn = guide.nodes["y_unobserved"]["value"]
    assert torch.equal(labels["value"], torch.where(given, y, drawn))  # the labels interleaved
    assert model.nodes["z"]["value"].shape == (6, 3) and model.nodes["x"]["is_observed"]
    # y=None: every label is missing.
    model, guide = traces(vae, x, None)
    assert model.nodes["y_unobserved"]["mask"].all()
    assert torch.equal(model.nodes["y"]["value"], guide.nodes["y_unobserved"]["value"])


def test_classic_pyro_trace_enum_elbo_trains_the_model_and_guide_as_they_are(pyro_mode):
    vae = m2()
    x, y = mixed(32)
    guide = config_enumerate(vae.guide, "parallel")
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    if pyro_mode == "param-store":  # Pyro's default mode: SVI and pyro.optim
        svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
        step = lambda: svi.step(x, y)  # noqa: E731
        loss = lambda: elbo.loss(vae.model, guide, x, y)  # noqa: E731
    else:  # the ELBO as a module, with a torch optimizer (of the VAE's parameters: the
        # enumerated guide is a function, whose parameters the loss module cannot list)
        loss_fn = elbo(vae.model, guide)
        optim = torch.optim.Adam(vae.parameters(), lr=1e-2)

        def step():
            optim.zero_grad()
            loss_fn(x, y).backward()
            optim.step()

        loss = lambda: loss_fn(x, y).item()  # noqa: E731
    torch.manual_seed(SEED)
    before = torch.tensor([loss() for _ in range(10)])
    for _ in range(60):
        step()
    after = torch.tensor([loss() for _ in range(10)])
    se = (before.var() / 10 + after.var() / 10).sqrt()
    assert after.mean() < before.mean() - 10 * se


def test_the_unlabelled_bound_sums_the_labelled_bounds_weighted_by_q(float64_default):
    """E[bound(x)] = sum_y q(y | x) E[bound(x, y)] + H(q(y | x)) for an unlabelled x, each
    side estimated from its own draws (R particles); the entropy is what tells them apart."""
    vae = m2(x_dim=16).double()
    x, _ = mixed(4, x_dim=16, dtype=torch.float64)
    r = 4000

    def bounds(y):  # per particle and image [R, B]
        t = walk(vae.model, vae.guide, x, y, num_particles=r, enumerate=True)
        return (t.enum_log_q.exp() * (t.log_lik - t.kl)).sum(0)

    torch.manual_seed(SEED)
    unlabelled = bounds(torch.full((4,), -1))
    labelled = torch.stack([bounds(torch.full((4,), c)) for c in range(C)])  # [C, R, B]
    q = vae.classify(x).T  # [C, B]
    entropy = -(q * q.log()).sum(0)
    lhs, rhs = unlabelled.mean(0), (q * labelled.mean(1)).sum(0) + entropy
    se = (unlabelled.var(0) / r + (q**2 * labelled.var(1) / r).sum(0)).sqrt()
    assert ((lhs - rhs).abs() < 4 * se).all(), (lhs - rhs, se)
    assert ((lhs - (rhs - entropy)).abs() > 4 * se).all()  # negative control: without H


def _aux_recipe(vae: VAE, alpha: float):
    """Pyro's tutorial's classification term: a model of one observed site y_aux ~ q(y | x),
    scaled by alpha and masked to the labelled images, with an empty guide."""

    def model(x, y):
        with pyro.plate("data", x.shape[0]), poutine.mask(mask=y >= 0), poutine.scale(scale=alpha):
            images = x.unflatten(-1, vae.config.image_shape)  # q(y | x) takes [B, C, H, W]
            q = pyro.distributions.Categorical(logits=vae.guide.classifier(images))
            pyro.sample("y_aux", q, obs=y.clamp(min=0))

    return model, lambda x, y: None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_enum_elbo_with_alpha_is_trace_enum_plus_pyros_auxiliary_loss(
    name, pyro_mode, float64_default
):
    """Every network, classifier, image shape and latent stack: the labels summed out in one
    batched pass equal TraceEnum_ELBO (plus the auxiliary loss), loss and gradients."""
    vae, x, y = variant(name)
    objective = EnumELBO(num_particles=2, alpha=3.0)
    params = list(vae.parameters())
    torch.manual_seed(SEED)
    t = objective.terms(vae.model, vae.guide, x, y)
    grads = torch.autograd.grad(t.loss, params)
    torch.manual_seed(SEED)
    expected = objective.pyro_equivalent().differentiable_loss(
        vae.model, objective.pyro_guide(vae.guide), x, y
    )
    expected = expected + Trace_ELBO(max_plate_nesting=1).differentiable_loss(
        *_aux_recipe(vae, 3.0), x, y
    )
    expected_grads = torch.autograd.grad(expected, params)
    assert t.loss.item() == pytest.approx(expected.item(), rel=1e-10)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
    given = y >= 0
    assert torch.equal(t.labelled, given)
    own = vae.classify(x).log().gather(1, y.clamp(min=0)[:, None])[:, 0]
    torch.testing.assert_close(t.classification, torch.where(given, -own, 0.0))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_traced_step_is_trace_enum_plus_the_auxiliary_loss(name, float64_default):
    vae, x, y = variant(name)
    loss = ELBOLoss(vae, EnumELBO(num_particles=2, alpha=3.0))
    gm = trace_step(loss, x, y)
    params, buffers = list(loss.parameters()), list(loss.buffers())
    torch.manual_seed(SEED)
    metrics, bad, *grads = gm(params, buffers, x, y)
    torch.manual_seed(SEED)
    objective = loss.objective
    expected = objective.pyro_equivalent().differentiable_loss(
        vae.model, objective.pyro_guide(vae.guide), x, y
    ) + Trace_ELBO(max_plate_nesting=1).differentiable_loss(*_aux_recipe(vae, 3.0), x, y)
    expected_grads = torch.autograd.grad(expected, params)
    torch.testing.assert_close(metrics[0], expected.detach(), rtol=1e-10, atol=1e-8)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
    assert not bad
    assert not any("_local_scalar_dense" in str(n.target) for n in gm.graph.nodes)
    # [loss, recon, KL, labelled -ELBO, labelled images, classification]
    assert metrics.shape == (6,) and metrics[4].item() == 3
    recon, kl, loss, classification = (metrics[i].item() for i in (1, 2, 0, 5))
    assert recon + kl == pytest.approx(loss - 3.0 * classification, rel=1e-9)


def test_the_compiled_step_trains_as_the_eager_step(float64_default):
    """Inductor draws its own random numbers; with fallback_random it uses torch's, and the
    compiled step's losses and updates equal the eager step's from the same seed. (The one
    compile of these tests.) In float64: in float32 the kernels' other order of summation
    moves an Adam update of a near-zero gradient by up to 2e-5 in 3 steps, which is not a
    difference between the two steps' maths."""
    import torch._inductor.config as inductor_config

    results = {}
    for kind in ("eager", "compiled"):
        vae = m2("conv")
        optimizer = make_optimizer(vae, TrainConfig(lr=1e-2))
        x, y = mixed(16, dtype=torch.float64)
        with inductor_config.patch(fallback_random=True):
            step = build_step(vae, optimizer, EnumELBO(alpha=3.0), kind, World())
            if kind == "compiled":
                with torch.random.fork_rng():
                    step._build(x, y)  # traces, checks against eager, compiles
                assert step.kind == "compiled"
            torch.manual_seed(SEED)
            losses = torch.stack([step(x, y)[0] for _ in range(3)])
        results[kind] = (losses, vae.state_dict())
    (a, sa), (b, sb) = results["eager"], results["compiled"]
    assert a.shape == (3, 6)  # [loss, recon, KL, labelled -ELBO, labelled, classification]
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-8)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-9, atol=1e-10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_graph_step_trains_as_the_replayed_graph():
    results = []
    for kind in ("fx", "cudagraph"):
        vae = m2("conv").cuda()
        config = TrainConfig(lr=1e-2)
        optimizer = make_optimizer(vae, config, capturable=kind == "cudagraph")
        step = build_step(vae, optimizer, EnumELBO(alpha=3.0), kind, World())
        x, y = (t.cuda() for t in mixed(16))
        step(x, y)
        torch.cuda.manual_seed(SEED)
        losses = torch.stack([step(x, y)[0].clone() for _ in range(5)])
        results.append((losses, vae.state_dict()))
    (la, sa), (lb, sb) = results
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-3)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)


# The conditional VAE without a classifier: what it was before semi-supervision existed.
CVAE_PARAMETERS = [
    "guide.encoder.net.0.weight",
    "guide.encoder.net.0.bias",
    "guide.encoder.net.2.weight",
    "guide.encoder.net.2.bias",
    "model.decoder.net.0.weight",
    "model.decoder.net.0.bias",
    "model.decoder.net.2.weight",
    "model.decoder.net.2.bias",
]


def test_the_conditional_vae_without_a_classifier_is_unchanged():
    vae = VAE(z_dim=3, hidden_dims=(8,), num_classes=C)
    # Checkpoints' optimizer state is positional: the order of parameters() must not move.
    assert [n for n, _ in vae.named_parameters()] == CVAE_PARAMETERS
    assert list(vae.state_dict()) == [*CVAE_PARAMETERS, "model.prior.loc", "model.prior.scale"]
    x, y = mixed()
    model, _ = traces(vae, x, y.clamp(min=0))
    assert [n for n, s in model.nodes.items() if s["type"] == "sample"] == ["data", "z", "x"]
    # The semi-supervised VAE adds its classifier after the encoder, the rest in place.
    names = [n for n, _ in m2().named_parameters()]
    assert [n for n in names if "classifier" not in n] == CVAE_PARAMETERS
    assert names[4].startswith("guide.classifier.")


@pytest.mark.parametrize(
    "vae,labels,match",
    [
        ("m2", [0, -2, 3], r"labels must lie in \[0, 10\) or be -1 \(missing\), got values in"),
        (
            "m2",
            [0, 10, -1],
            r"must lie in \[0, 10\) or be -1 \(missing\), got values in \[-1, 10\]",
        ),
        ("cvae", [0, -1, 3], "label -1 \\(missing\\) needs the semi-supervised VAE"),
        ("cvae", [0, -3, 3], r"labels must lie in \[0, 10\), got values in \[-3, 3\]"),
    ],
)
def test_labels_out_of_range_are_one_line_errors(vae, labels, match):
    vae = m2() if vae == "m2" else VAE(z_dim=3, hidden_dims=(8,), num_classes=C)
    x, _ = mixed(3)
    for site in (vae.model, vae.guide):
        with pytest.raises(ValueError, match=match) as e:
            site(x, torch.tensor(labels))
        assert "\n" not in str(e.value)


def test_the_conv_classifier_follows_the_image_shape():
    """q(y | x) takes [B, C, H, W] of any channels and sides (not only square ones); images
    its two convolutions cannot read get a one-line error naming the fix."""
    vae = m2("conv", x_dim=None, image_shape=(3, 20, 15))
    assert vae.guide.classifier.features[0].in_channels == 3
    probs = vae.classify(torch.rand(4, 3, 20, 15))
    assert probs.shape == (4, C) and torch.allclose(probs.sum(-1), torch.ones(4))
    with pytest.raises(
        ValueError,
        match=r"^the conv classifier needs images of at least 13x13, "
        r"got 12x28; use --classifier mlp$",
    ):
        m2("conv", x_dim=None, image_shape=(1, 12, 28))
    m2("mlp", x_dim=None, image_shape=(1, 12, 28))  # the MLP reads any size


def test_accuracy_and_confusion_count_what_q_says(monkeypatch):
    vae = m2()
    x, _ = mixed(8)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    said = torch.tensor([0, 1, 2, 3, 1, 1, 2, 0])  # 6 of 8 right
    answers = iter([said[:5], said[5:]])  # what q(y | x) says of each batch
    monkeypatch.setattr(vae, "classify", lambda x: torch.nn.functional.one_hot(next(answers), C))
    r = label_accuracy(vae, [(x[:5], y[:5]), (x[5:], y[5:])])
    assert r["accuracy"] == 0.75 and r["num_images"] == 8
    assert r["std_error"] == pytest.approx(math.sqrt(0.75 * 0.25 / 8))
    assert r["confusion"][0][:4] == [1, 1, 0, 0] and r["confusion"][3][:4] == [1, 0, 0, 1]
    assert r["per_class"][:4] == [0.5, 1.0, 1.0, 0.5]
    text = format_accuracy(r)
    assert "75.00%" in text and len(text.splitlines()) == 4 + C


def test_the_explorer_shows_q_y_given_x_for_a_drawing():
    vae = m2()
    x, y = mixed(4)
    explorer = Explorer(vae, x, y.clamp(min=0))
    score = explorer.score_drawing(x[0], num_samples=3)
    expected = vae.classify(x[:1])[0]
    torch.testing.assert_close(torch.tensor(score.label_probabilities), expected)
    assert len(score.label_log_likelihoods) == C  # log p(x | y) for every label, still


def test_the_papers_alpha_in_per_image_units():
    # 0.1 N on the mean over the labelled images = 0.1 N / N_l on each (N_l seen once an epoch).
    assert semi_supervised_alpha(60_000, 100) == pytest.approx(60.0)
    # With 16 labelled images in each of 535 batches, each occurrence weighs 0.1 N / 8560.
    assert semi_supervised_alpha(60_000, 16 * 535) == pytest.approx(6000 / 8560)


@pytest.fixture(scope="module")
def semi_run(mnist_dir, tmp_path_factory):
    """One epoch of `pyro-vae train --num-classes 10 --labelled 20` on 600 images, with the
    traced step (checked against the eager step before it trains) and 8 labelled images in
    every batch."""
    out = tmp_path_factory.mktemp("semi") / "run"
    code = main(
        ["train", "--data-dir", str(mnist_dir), "--out", str(out), "--epochs", "1"]
        + ["--num-classes", "10", "--labelled", "20", "--label-seed", "3"]
        + ["--labelled-per-batch", "8", "--batch-size", "64", "--step", "fx"]
        + ["--train-subset", "600", "--test-subset", "200", "--z-dim", "4"]
        + ["--hidden-dims", "32", "--classifier-dims", "32", "--device", "cpu", "--no-progress"]
    )
    assert code == 0
    return out


@pytest.mark.mnist
def test_train_with_labelled_records_the_draw_and_reports_accuracy_and_both_bounds(
    semi_run, capsys
):
    config = json.loads((semi_run / "config.json").read_text())
    assert config["vae"]["classifier"] == "conv" and config["train"]["elbo"] == "enum"
    record = config["labelled"]
    assert record["num"] == 20 and record["seed"] == 3 and record["per_class"] == [2] * C
    # alpha: the paper's 0.1 N over the labelled images an epoch shows: 8 in each of the 11
    # batches that 580 unlabelled images fill 56 at a time.
    assert config["train"]["alpha"] == pytest.approx(0.1 * 600 / (8 * 11))
    (m,) = [json.loads(line) for line in (semi_run / "metrics.jsonl").read_text().splitlines()]
    assert m["step"] == "fx" and m["objective"] == "TraceEnum_ELBO"
    assert 0 <= m["test_accuracy"] <= 1 and m["train_labelled"] == 88
    for key in ("train_neg_elbo_labelled", "train_neg_elbo_unlabelled", "test_neg_elbo_unlabelled"):
        assert 0 < m[key] < 800, key
    # The whole epoch's -ELBO is the labelled and the unlabelled images' together (88 + 580).
    whole = (88 * m["train_neg_elbo_labelled"] + 580 * m["train_neg_elbo_unlabelled"]) / 668
    assert m["train_neg_elbo"] == pytest.approx(whole, rel=1e-5)
    assert (semi_run / "figures" / "class_grid.png").is_file()


@pytest.mark.mnist
def test_evaluate_sample_and_resume_a_semi_supervised_run(semi_run, mnist_dir, capsys):
    capsys.readouterr()
    common = ["--data-dir", str(mnist_dir), "--device", "cpu"]
    evaluate = ["evaluate", str(semi_run), *common, "--samples-per-class", "0", "--test-subset"]
    assert main([*evaluate, "200"]) == 0
    out = capsys.readouterr().out
    report = json.loads((semi_run / "eval.json").read_text())["classification"]
    assert f"test accuracy of q(y | x): {report['accuracy']:.2%}" in out
    assert "confusion matrix" in out and sum(map(sum, report["confusion"])) == 200
    assert main(["sample", str(semi_run), "--label", "3", "--device", "cpu"]) == 0
    assert (semi_run / "figures" / "sample_label3.png").is_file()
    # Resumed: the same labelled images, drawn again from the seed and checked.
    argv = ["train", "--out", str(semi_run), "--resume", "--epochs", "2", "--step", "eager"]
    assert main([*argv, *common, "--no-progress"]) == 0
    rows = (semi_run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and json.loads(rows[1])["train_labelled"] == 88


@pytest.mark.mnist
def test_the_pyro_recipe_benchmark_trains_the_library_vae_by_classic_svi(mnist_dir, capsys):
    """benchmarks/m2_pyro_recipe.py (Pyro's ss_vae_M2 scheme on this VAE) runs on the library
    as it is: every epoch scores q(y | x) on the validation and the test images."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import m2_pyro_recipe

    rows = m2_pyro_recipe.main(
        ["--data-dir", str(mnist_dir), "--epochs", "1", "--train-subset", "1200"]
    )
    assert [r["epoch"] for r in rows] == [1]
    assert all(0 <= r[k] <= 100 for r in rows for k in ("valid", "test"))
    assert "test accuracy at the best validation epoch (1)" in capsys.readouterr().out


@pytest.mark.mnist
def test_the_m1_m2_benchmark_fits_the_library_vae_on_a_trained_runs_codes(
    mnist_dir, tmp_path, capsys, pyro_mode
):
    """benchmarks/m1_m2.py (M2 on M1's codes) runs on the library as it is: M1 a committed run,
    M2 a semi-supervised VAE over M1's active units with a user-given Gaussian likelihood, fitted
    by EnumELBO through a traced step; each epoch's test accuracy is recorded."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    import m1_m2

    m1 = root / "results" / "semi-supervised" / "m1-iwae-vae-1811"  # the M1 the docs measure
    args = ["--m1", str(m1), "--data-dir", str(mnist_dir), "--out", str(tmp_path)]
    args += ["--labelled", "20", "--labelled-per-batch", "4", "--batch-size", "32"]
    args += ["--draws", "1", "--epochs", "2", "--train-subset", "640", "--step", "fx"]
    args += ["--active-units", "--hidden", "50"]
    (last,) = m1_m2.main(args)
    run = tmp_path / "labels20" / "draw0"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1] == last
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 2
    capsys.readouterr()
    # --resume continues the draw from its checkpoint: epoch 3 only, the first two kept.
    (resumed,) = m1_m2.main(
        [*args[: args.index("--epochs")], "--epochs", "3", "--resume"]
        + args[args.index("--epochs") + 2 :]
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[1] == last and rows[2] == resumed
    assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 3
    out = capsys.readouterr().out
    assert "resumed after epoch 2" in out and "epoch   1/3" not in out and "epoch   3/3" in out
    assert 0 <= last["test_accuracy"] <= 1 and math.isfinite(last["train_loss"])
    config = json.loads((run / "config.json").read_text())
    # The IWAE-paper VAE leaves about half of its 50 units inactive: fewer codes than units.
    assert 0 < config["code_dims"] < 50
    # Which M1 the draw used: its epoch and its checkpoint's hash.
    assert config["m1_epoch"] == 1811
    assert config["m1_sha256"] == hashlib.sha256((m1 / "checkpoint.pt").read_bytes()).hexdigest()
    # --class-grid draws a trained draw's class-conditional samples, and trains nothing.
    import matplotlib.pyplot as plt

    assert m1_m2.main([*args, "--class-grid"]) == []
    grid = plt.imread(run / "class_grid.png")
    assert grid.ndim == 3 and grid.shape[0] > 200 and grid[..., :3].std() > 0.1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # no epoch added
    with pytest.raises(SystemExit, match="has no checkpoint.pt"):  # a draw never trained
        m1_m2.main([*args, "--class-grid", "--out", str(tmp_path / "none")])
    capsys.readouterr()
    # --summary: the draws' accuracy from their metrics, every 10 epochs and at the last.
    assert m1_m2.main([*args, "--summary"]) == [resumed]
    table = capsys.readouterr().out.splitlines()
    assert table[-1].split()[:2] == ["3", f"{100 * resumed['test_accuracy']:.2f}"]
    with pytest.raises(SystemExit, match="train draw 1 first"):
        m1_m2.main([*args, "--summary", "--draws", "2"])
