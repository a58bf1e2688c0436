"""The networks: the conv encoder and decoder for any image size (powers of 2 or not), the
particle dims a decoder must keep, the conditional VAE with conv, and the user's own modules,
checked once against the contract with one-line errors."""

from __future__ import annotations

import itertools

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_vae import VAE, VAEConfig
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.networks import ConvDecoder, ConvEncoder, conv_sides, with_label

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 20, 30), (3, 17, 9)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("num_classes", [0, 4])
def test_conv_networks_fit_any_image_size_and_keep_leading_dims(shape, num_classes):
    torch.manual_seed(0)
    channels = (4, 8, 16) if min(shape[1:]) >= 8 else (4,)
    enc = ConvEncoder(shape, 5, channels, "relu", num_classes)
    dec = ConvDecoder(shape, 5, channels, "relu", num_classes, params_per_pixel=2)
    x = torch.rand(6, *shape)
    y = torch.eye(4)[torch.arange(6) % 4] if num_classes else None
    loc, scale = enc(x, y)
    assert loc.shape == scale.shape == (6, 5) and (scale > 0).all()
    z = torch.randn(3, 6, 5)  # a particle dim in front of the batch
    out = dec(z, y)
    assert out.shape == (3, 6, 2 * shape[0] * shape[1] * shape[2])
    # Folding the particles into the batch and back is exact: each particle alone agrees.
    for k in range(3):
        torch.testing.assert_close(out[k], dec(z[k], y))
    # The last transposed convolution comes back to the image's own H x W (28 = odd 7 x 4).
    h = dec.fc(with_label(z[0], y)).reshape(-1, *dec.features)
    assert dec.deconvs(h).shape == (6, 2 * shape[0], shape[1], shape[2])


def test_the_sides_halve_with_a_floor_and_the_decoder_pads_the_odd_ones_back():
    assert conv_sides((1, 28, 28), (32, 64, 128)) == [(28, 28), (14, 14), (7, 7), (3, 3)]
    dec = ConvDecoder((1, 28, 28), 2, (32, 64, 128), "relu", 0, 1)
    pads = [m.output_padding for m in dec.deconvs if isinstance(m, nn.ConvTranspose2d)]
    assert pads == [(1, 1), (0, 0), (0, 0)]  # 3 -> 7 (odd), 7 -> 14, 14 -> 28
    with pytest.raises(ValueError, match="need images of at least 16x16, got 8x8"):
        conv_sides((1, 8, 8), (4, 4, 4, 4))


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_every_likelihood_takes_the_conv_decoders_output(likelihood):
    vae = VAE(z_dim=3, network="conv", conv_channels=(4, 8), image_shape=(3, 16, 16),
              likelihood=likelihood)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (4, 3 * 16 * 16), generator=g).float()
    x = (k + 0.5) / 256 if vae.likelihood.data_kind not in ("binary", "8-bit") else k / 255
    x = torch.bernoulli(x) if vae.likelihood.data_kind == "binary" else x
    x = vae.likelihood.prepare(x) if vae.likelihood.data_kind == "8-bit" else x
    loss = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    value = loss.differentiable_loss(vae.model, vae.guide, x)
    value.backward()
    assert torch.isfinite(value)
    assert all(p.grad is not None for p in vae.parameters() if p.requires_grad)


def test_the_conditional_conv_vae_decodes_the_label():
    torch.manual_seed(0)
    vae = VAE(z_dim=2, num_classes=10, network="conv", conv_channels=(4, 8))
    z = torch.zeros(1, 2)
    a, b = vae.decode(z, torch.tensor([0])), vae.decode(z, torch.tensor([1]))
    assert not torch.allclose(a, b)
    assert vae.model.decoder.fc[0].in_features == 2 + 10  # the label joins z
    assert vae.guide.encoder.head.in_features == 8 * 7 * 7 + 10  # and the encoder's features


def test_a_conv_config_rebuilds_the_same_model():
    vae = VAE(z_dim=3, network="conv", conv_channels=(4, 8), image_shape=(3, 12, 10))
    config = VAEConfig.from_dict(vae.config.to_dict())
    assert config == vae.config and config.x_dim == 360
    other = VAE.from_config(config)
    assert {k: v.shape for k, v in other.state_dict().items()} == {
        k: v.shape for k, v in vae.state_dict().items()
    }
    with pytest.raises(ValueError, match=r"x_dim 784 does not match image_shape \(3, 12, 10\)"):
        VAEConfig(x_dim=784, image_shape=(3, 12, 10))


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_the_vamp_prior_feeds_its_pseudo_inputs_to_the_conv_encoder_as_images(prior):
    vae = VAE(z_dim=2, prior=prior, network="conv", conv_channels=(4,), image_shape=(3, 8, 6))
    x = torch.rand(5, 3 * 8 * 6)
    assert torch.isfinite(torch.tensor(Trace_ELBO().loss(vae.model, vae.guide, x.round())))


# The user's own encoder and decoder.


class ConvPair:
    """A user's conditional conv encoder and decoder for 1 x 16 x 16 images, z_dim 4."""

    def __init__(self, num_classes: int = 0) -> None:
        self.encoder = UserEncoder(num_classes)
        self.decoder = UserDecoder(num_classes)


class UserEncoder(nn.Module):
    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()
        )
        self.head = nn.Linear(4 * 8 * 8 + num_classes, 8)

    def forward(self, x, y_onehot=None):
        h = self.conv(x)
        h = torch.cat([h, y_onehot], -1) if y_onehot is not None else h
        loc, raw = self.head(h).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-4


class UserDecoder(nn.Module):
    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self.fc = nn.Linear(4 + num_classes, 4 * 8 * 8)
        self.up = nn.ConvTranspose2d(4, 1, 4, 2, 1)

    def forward(self, z, y_onehot=None):
        lead = z.shape[:-1]
        h = self.fc(with_label(z, y_onehot)).reshape(-1, 4, 8, 8)
        return self.up(h).reshape(*lead, -1)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_a_users_networks_train_in_both_pyro_modes(pyro_mode, num_classes):
    pair = ConvPair(num_classes)
    vae = VAE(z_dim=4, image_shape=(1, 16, 16), encoder=pair.encoder, decoder=pair.decoder,
              num_classes=num_classes)  # fmt: skip
    assert vae.config.network == "custom"
    assert vae.custom_objects() == {"encoder": "UserEncoder", "decoder": "UserDecoder"}
    x = torch.bernoulli(torch.full((6, 256), 0.3))
    y = torch.arange(6) % 3 if num_classes else None
    before = pair.encoder.head.weight.clone()
    if pyro_mode == "param-store":  # classic SVI finds the user's weights through pyro.module
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
        svi.step(x, y)
        names = set(pyro.get_param_store().keys())
        assert f"{vae.name}.guide.encoder.net$$$head.weight" in names
        assert all(n.startswith(vae.name) for n in names)  # the check registered nothing
    else:
        loss_fn = Trace_ELBO()(vae.model, vae.guide)
        opt = torch.optim.Adam(loss_fn.parameters(), lr=0.01)
        loss_fn(x, y).backward()
        opt.step()
    assert not torch.equal(before, pair.encoder.head.weight)
    with pytest.raises(ValueError, match="custom prior, likelihood or network cannot rebuild"):
        VAE.from_config(vae.config)


def test_the_construction_check_leaves_batch_norm_and_training_mode_alone():
    pair = ConvPair()
    bn = pair.encoder.conv[1]
    stats = bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)
    VAE(z_dim=4, image_shape=(1, 16, 16), encoder=pair.encoder, decoder=pair.decoder)
    assert pair.encoder.training and bn.training
    assert torch.equal(bn.running_mean, stats[0]) and int(bn.num_batches_tracked) == stats[2]


class Returns(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, y_onehot=None):
        return self.fn(x)


def _flat_decoder(z):
    return torch.zeros(*z.shape[:-1], 256)


def _batch_only_decoder(z):  # folds leading dims away: [K, B, z] -> [K * B, 256]
    return torch.zeros(z.reshape(-1, z.shape[-1]).shape[0], 256)


GOOD_ENCODER = Returns(lambda x: (torch.zeros(x.shape[0], 4), torch.ones(x.shape[0], 4)))
BAD_PAIRS = [
    (Returns(lambda x: torch.zeros(x.shape[0], 8)), Returns(_flat_decoder),
     r"the encoder returned \[2, 8\] for x \[2, 1, 16, 16\]; it must return \(loc, scale\), "
     r"each \[batch, z_dim\] = \[2, 4\]"),
    (Returns(lambda x: (torch.zeros(2, 3), torch.ones(2, 3))), Returns(_flat_decoder),
     r"returned \(\[2, 3\], \[2, 3\]\)"),
    (Returns(lambda x: x.view(-1, 100)), Returns(_flat_decoder),
     r"the encoder fails on x \[2, 1, 16, 16\] \(RuntimeError: shape '\[-1, 100\]'"),
    (GOOD_ENCODER, Returns(lambda z: torch.zeros(*z.shape[:-1], 1, 16, 16)),
     r"the decoder returned \[2, 1, 16, 16\] for z \[2, 4\]; it must return \[\.\.\., batch, "
     r"1 x C\*H\*W\] = \[2, 256\] raw likelihood parameters for the images 1x16x16, flattened"),
    (GOOD_ENCODER, Returns(_batch_only_decoder),
     r"returned \[6, 256\] for z \[3, 2, 4\].*= \[3, 2, 256\].*keep z's leading dims"),
    (GOOD_ENCODER, Returns(lambda z: z.reshape(2, -1) @ torch.zeros(4, 256)),
     r"the decoder fails on z \[3, 2, 4\] \(RuntimeError.*; keep z's leading dims"),
]  # fmt: skip


@pytest.mark.parametrize("encoder,decoder,match", BAD_PAIRS)
def test_networks_that_do_not_fit_the_images_are_refused_in_one_line(encoder, decoder, match):
    with pytest.raises(ValueError, match=match) as e:
        VAE(z_dim=4, image_shape=(1, 16, 16), encoder=encoder, decoder=decoder)
    assert "\n" not in str(e.value)


def test_the_good_pair_of_the_bad_cases_is_accepted_and_half_a_pair_is_not():
    VAE(z_dim=4, image_shape=(1, 16, 16), encoder=GOOD_ENCODER, decoder=Returns(_flat_decoder))
    with pytest.raises(ValueError, match="pass both encoder= and decoder= modules, or neither"):
        VAE(encoder=GOOD_ENCODER)
    with pytest.raises(TypeError, match="decoder must be a torch.nn.Module, got function"):
        VAE(z_dim=4, image_shape=(1, 16, 16), encoder=GOOD_ENCODER, decoder=_flat_decoder)


def test_a_discretized_logistic_decoder_needs_two_maps_per_channel():
    # params_per_pixel = 2: a decoder of one map per channel does not fit RGB images.
    enc = Returns(lambda x: (torch.zeros(x.shape[0], 4), torch.ones(x.shape[0], 4)))
    dec = Returns(lambda z: torch.zeros(*z.shape[:-1], 3 * 8 * 8))
    with pytest.raises(ValueError, match=r"2 x C\*H\*W\] = \[2, 384\]"):
        VAE(z_dim=4, image_shape=(3, 8, 8), encoder=enc, decoder=dec,
            likelihood="discretized-logistic")  # fmt: skip


@pytest.mark.parametrize("network,classes", list(itertools.product(["mlp", "conv"], [0, 10])))
def test_the_encoder_sees_images_and_the_model_flat_values(network, classes):
    seen = []
    vae = VAE(z_dim=2, network=network, conv_channels=(4,), num_classes=classes)
    vae.guide.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    x = torch.bernoulli(torch.full((3, 784), 0.5))
    y = torch.arange(3) if classes else None
    out = vae.model(x, y)
    vae.guide(x, y)
    vae.encode(x.reshape(3, 1, 28, 28), y)  # images as [B, C, H, W] are taken too
    assert out.shape == (3, 784) and seen == [(3, 1, 28, 28)] * 2
