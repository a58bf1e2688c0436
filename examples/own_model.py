"""Your own Pyro model through pyro-vae's trainer: content ~ N(0, I) and style ~ Laplace(0, s),
s learned, side by side in x ~ Bernoulli(decoder(content, style)); the guide draws content from
x, then style from content. No VAE of the library has this shape; UserModel trains it."""

import argparse

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae import TrainConfig, UserModel, train

C, S = 16, 4  # content and style sizes
encoder = nn.Sequential(nn.Linear(784, 256), nn.Tanh(), nn.Linear(256, 2 * C))
style_net = nn.Sequential(nn.Linear(C, 64), nn.Tanh(), nn.Linear(64, 2 * S))
decoder = nn.Sequential(nn.Linear(C + S, 256), nn.Tanh(), nn.Linear(256, 784))


def normal(out):  # a diagonal Gaussian from a network's output [..., 2 * size]
    loc, raw = out.chunk(2, -1)
    return dist.Normal(loc, nn.functional.softplus(raw) + 1e-4).to_event(1)


def model(x):
    s = pyro.param("style_scale", lambda: torch.ones(S), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        content = pyro.sample("content", dist.Normal(x.new_zeros(C), 1.0).to_event(1))
        style = pyro.sample("style", dist.Laplace(x.new_zeros(S), s).to_event(1))
        logits = decoder(torch.cat([content, style], -1))
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def guide(x):
    with pyro.plate("data", x.shape[0]):
        content = pyro.sample("content", normal(encoder(x)))
        pyro.sample("style", normal(style_net(content)))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    for flag in ["--data-dir", "--out", "--device"]:
        p.add_argument(flag)  # unset: TrainConfig's default
    for flag in ["--epochs", "--train-subset", "--test-subset", "--test-iw-samples"]:
        p.add_argument(flag, type=int)
    given = {k: v for k, v in vars(p.parse_args()).items() if v is not None}
    nets = {"encoder": encoder, "style_net": style_net, "decoder": decoder}
    train(UserModel(model, guide, modules=nets, name="content-style"), TrainConfig(**given))
