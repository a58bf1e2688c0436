"""The hand-written PyTorch M2 (Kingma et al. 2014) that the benchmarks measure pyro-vae's
semi-supervised VAE against: no Pyro anywhere, what a user writes by hand.

The same networks as ``pyro_vae.VAE(num_classes=C, classifier=...)``: the encoder
q(z | x, y) (x and one-hot y -> hidden -> 2 x z_dim, softplus scale), the decoder
p(x | y, z) (z and one-hot y -> hidden reversed -> Bernoulli logits) and the classifier
q(y | x) (``pyro_vae.models.label_encoder``'s architectures, rebuilt here). The same loss,
summed over the batch: every image is run under all C labels in one batched pass, [C, B];
for an unlabelled image (y = -1) the C bounds are weighted by q(y | x) and the entropy of
q(y | x) is added (y summed out exactly), for a labelled one the C copies hold its own label
and are weighted by q(y | x) as well, as TraceEnum_ELBO weighs them (they are C draws of z
given that label). Plus alpha * -log q(y | x) on the labelled images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_SCALE = 1e-4  # as pyro_vae.models.networks.GUIDE_MIN_SCALE
LOG_2PI = math.log(2 * math.pi)
ACTIVATIONS = {"softplus": nn.Softplus, "tanh": nn.Tanh, "relu": nn.ReLU}


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _conv(side: int, hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """pyro_vae.models.label_encoder.ConvClassifier's layers: two conv5 of stride 2 (16 and
    32 channels), then the hidden layers."""
    after = ((side - 5) // 2 + 1 - 5) // 2 + 1
    return nn.Sequential(
        nn.Unflatten(-1, (1, side, side)),
        nn.Conv2d(1, 16, 5, stride=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 5, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        _mlp([32 * after * after, *hidden, num_classes], "relu"),
    )


class ReferenceM2(nn.Module):
    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        hidden: tuple[int, ...] = (500,),
        activation: str = "softplus",
        num_classes: int = 10,
        classifier: str = "mlp",
        classifier_hidden: tuple[int, ...] = (500,),
    ) -> None:
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        c = num_classes
        self.encoder = _mlp([x_dim + c, *hidden, 2 * z_dim], activation)
        self.decoder = _mlp([z_dim + c, *reversed(hidden), x_dim], activation)
        if classifier == "mlp":
            self.classifier = _mlp([x_dim, *classifier_hidden, c], activation)
        else:
            self.classifier = _conv(round(x_dim**0.5), classifier_hidden, c)

    def loss_terms(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, D] 0/1 pixels, y [B] labels with -1 = unlabelled. Returns the bound per image
        [B] (log p(x, y) bound for labelled, log p(x) for unlabelled) and -log q(y | x) [B]
        (0 where unlabelled)."""
        c, b = self.num_classes, x.shape[0]
        labelled = y >= 0
        log_q_y = self.classifier(x).log_softmax(-1)  # [B, C]
        every = torch.arange(c, device=x.device)[:, None].expand(c, b)
        ys = torch.where(labelled, y, every)  # [C, B]: the label, or each label in turn
        onehot = F.one_hot(ys, c).to(x.dtype)  # [C, B, C]
        # The encoder's first layer on [x, one-hot y]: its x part once for all C labels.
        first = self.encoder[0]
        d = x.shape[-1]
        h = F.linear(x, first.weight[:, :d], first.bias) + F.linear(onehot, first.weight[:, d:])
        loc, raw = self.encoder[1:](h).split(self.z_dim, -1)
        scale = F.softplus(raw) + MIN_SCALE
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        logits = self.decoder(torch.cat([z, onehot], -1))
        log_lik = -F.binary_cross_entropy_with_logits(
            logits, x.expand(c, b, -1), reduction="none"
        ).sum(-1)
        log_qz = (-0.5 * eps.pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
        log_pz = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
        log_py = -math.log(c)
        # log q(y | x) of the enumerated label where y is summed out; 0 where it is observed.
        log_qy = torch.where(labelled, 0.0, log_q_y.T)  # [C, B]
        bound = (log_q_y.T.exp() * (log_lik + log_pz - log_qz + log_py - log_qy)).sum(0)
        own = log_q_y.gather(-1, y.clamp(min=0)[:, None])[:, 0]
        return bound, torch.where(labelled, -own, 0.0)

    def loss(self, x: Tensor, y: Tensor, alpha: float) -> Tensor:
        bound, classification = self.loss_terms(x, y)
        return -bound.sum() + alpha * classification.sum()


def reference_m2_step(
    model: ReferenceM2, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, alpha: float
) -> Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = model.loss(x, y, alpha)
    loss.backward()
    optimizer.step()
    return loss
