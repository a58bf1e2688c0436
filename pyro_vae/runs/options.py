"""The settings of a training run, as a typed dataclass: the table of ``pyro-vae train``'s
options, and the one check of what a resumed run may change.

Each field states, once, its default, its help, its command-line flag and parse type, its
choices and whether a resumed run may change it (``runtime.settings.setting``); the CLI builds
its options from these fields. A checkpoint stores them as a plain dict, so a run can be rebuilt
from its directory alone.

Adding an option is one field here (or in ``VAEConfig`` for the model), e.g.::

    kl_weight: float = setting(1.0, "weight of the KL term", parse=positive_float)

gives ``--kl-weight`` (checked > 0, shown with its default in --help), the Python check of
``TrainConfig(kl_weight=...)``, its record in config.json and the checkpoint, its default for
runs recorded before it existed, and its refusal on --resume (``resumable=True`` to allow it).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyro_vae.data.datasets import USAGE, DatasetSpec, parse_dataset
from pyro_vae.data.torchvision_data import DATA_ENV, default_data_dir
from pyro_vae.inference.objectives import (
    OBJECTIVES,
    EnumELBO,
    Objective,
    make_objective,
    semi_supervised_alpha,
)
from pyro_vae.inference.steps import STEP_KINDS
from pyro_vae.models.config import VAEConfig, _known_fields
from pyro_vae.models.vae import DEFAULT_KL_WEIGHT
from pyro_vae.runs.presets import PRESETS
from pyro_vae.runtime.settings import (
    NONNEGATIVE,
    POSITIVE,
    check_settings,
    flag_of,
    fraction,
    nonnegative_float,
    positive_float,
    setting,
    settings_of,
    shown,
)
from pyro_vae.runtime.settings import betas as two_betas

# The data modes of TrainConfig.data_mode (the CLI's --data-mode).
DATA_MODES = ("auto", "dynamic", "threshold", "dequantize", "none")
# Training objectives and step kinds: their registries' names; and learning-rate schedules.
# elbo "auto" is "enum" for the semi-supervised VAE (its missing labels summed out), else
# "trace"; a run records what it resolved to.
ELBO_CHOICES = ("auto", *OBJECTIVES)
STEP_CHOICES = ("auto", *STEP_KINDS)
LR_SCHEDULES = ("constant", "staged")
DECODER_BIAS_INITS = ("default", "data-mean")


def dataset_spec(s: str) -> str:
    """A --dataset: a name of the registry, folder:PATH or tensor:FILE."""
    try:
        parse_dataset(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


def user_dataset(s: str) -> str:
    """A --test-dataset: folder:PATH or tensor:FILE ("" = a split of --dataset's images)."""
    if s == "":  # argparse converts string defaults too: "" is train's (a fixed-seed split)
        return s
    if parse_dataset(dataset_spec(s))[1].read is None:
        raise argparse.ArgumentTypeError(f"expected folder:PATH or tensor:FILE, got {s!r}")
    return s


@dataclass
class TrainConfig:
    """Options of one training run (the CLI's flags)."""

    data_dir: str = setting(
        "data",
        "folder holding MNIST/raw, FashionMNIST/raw or KMNIST/raw, downloaded if missing",
        resumable=True,
        cli_default=default_data_dir,
        shown=f"${DATA_ENV} or ./data",
    )
    out: str = setting("runs/vae", "run directory", resumable=True)
    epochs: int = setting(10, "epochs in all", parse=POSITIVE, resumable=True)
    batch_size: int = setting(128, "global minibatch size", parse=POSITIVE)
    lr: float = setting(1e-3, "Adam learning rate", parse=positive_float)
    # Adam's betas and eps (torch's defaults; the IWAE paper's preset sets eps = 1e-4).
    betas: tuple[float, float] = setting(
        (0.9, 0.999), "Adam's betas", flag="--adam-betas", parse=two_betas
    )
    eps: float = setting(1e-8, "Adam's eps", flag="--adam-eps", parse=positive_float)
    # "constant", or "staged": stage i = 0, 1, ... runs 3^i epochs at lr * 10^(-i/7), the IWAE
    # paper's schedule (a torch MultiStepLR; its state is in the checkpoint).
    lr_schedule: str = setting(
        "constant",
        "staged: stage i = 0..7 runs 3^i epochs at lr * 10^(-i/7) (the IWAE paper's)",
        choices=LR_SCHEDULES,
    )
    elbo: str = setting(
        "auto",
        "trace = Trace_ELBO (Monte Carlo KL), meanfield = TraceMeanField_ELBO (analytic KL), "
        "iwae = the importance-weighted bound L_K with K = --num-particles, enum = "
        "TraceEnum_ELBO (missing labels summed out); auto: enum for the semi-supervised VAE, "
        "else trace",
        choices=ELBO_CHOICES,
        keeps_run=("auto",),
    )
    num_particles: int = setting(1, "particles (K), vectorized", parse=POSITIVE)
    # beta-VAE and KL warm-up: a scale on the latent sites (models.vae.KLWeight), so the
    # metrics report the weighted objective (train_loss) beside the unweighted ELBO.
    kl_weight: float = setting(
        DEFAULT_KL_WEIGHT,
        "beta, the weight of the KL term in the training objective (the test -ELBO and the "
        "NLL stay unweighted)",
        parse=positive_float,
    )
    kl_warmup: int = setting(
        0,
        "KL warm-up: training steps over which the KL weight rises linearly from "
        "--kl-weight / STEPS to --kl-weight",
        parse=NONNEGATIVE,
        shown="0: none",
    )
    # How the uint8 pixels k become the data (one option, so no two settings can contradict):
    # "dynamic": a fresh Bernoulli(k / 255) draw each time a training batch is used;
    # "threshold": k / 255 > 0.5; "dequantize": a fresh (k + u) / 256, u ~ U(0, 1), per batch
    # (densities then bound the 8-bit data's likelihood); "none": the raw values k / 255.
    # "auto" resolves to "dynamic" for binary likelihoods, "none" for the discretized one and
    # "dequantize" for densities. The run records the resolved mode (runs made when "auto"
    # meant "none" for densities recorded "none", and still load that way); "auto" given to a
    # resumed run means the run's. Runs made before the rename recorded it as "binarize".
    data_mode: str = setting(
        "auto",
        "how pixels become data. auto: dynamic for bernoulli, none (the raw 8-bit values) for "
        "discretized-logistic, dequantize ((k + u) / 256, fresh per batch) for the others",
        aliases=("--binarize",),
        choices=DATA_MODES,
        keeps_run=("auto",),
    )
    seed: int = setting(
        0, "seed of the initial weights, the data order and every draw of noise", parse=int
    )
    device: str = setting("auto", "auto (CUDA when available), cpu or cuda", resumable=True)
    # Only the first N training / test images (0 = all); for quick runs and tests.
    train_subset: int = setting(
        0, "use the first N training images", parse=NONNEGATIVE, shown="0: all"
    )
    test_subset: int = setting(0, "use the first N test images", parse=NONNEGATIVE, shown="0: all")
    # The decoder's output bias at the start: torch's initialization ("default"), or the
    # logit of the training set's mean pixel ("data-mean", as the IWAE paper's code does).
    decoder_bias: str = setting(
        "default",
        "data-mean: start the decoder's output bias at the logit of the mean pixel",
        choices=DECODER_BIAS_INITS,
    )
    step: str = setting(
        "auto",
        "eager: Pyro every step; fx/compiled: traced once, replayed (compiled by inductor); "
        "cudagraph: CUDA graph. auto: cudagraph on a GPU, compiled on a CPU for runs of "
        "2000+ steps, else eager",
        choices=STEP_CHOICES,
        resumable=True,
    )
    test_iw_samples: int = setting(
        0,
        "also the test -L_K with this K at each stage's end (staged schedule; every epoch "
        "otherwise) and at the last epoch, e.g. 100",
        parse=NONNEGATIVE,
        shown="0: off",
        resumable=True,
    )
    tensorboard: bool = setting(
        False,
        'also log scalars and image grids to RUN_DIR/tensorboard (pip install -e ".[tensorboard]")',
        resumable=True,
    )
    # The preset the run was made from (presets.PRESETS); its values are the fields above.
    preset: str | None = setting(
        None,
        "a published protocol: sets its network, optimizer, schedule, batch and epochs "
        "(iwae-paper, iwae-paper-2layer: Burda et al. 2016, Table 1, one and two stochastic "
        "layers); options typed as well override it",
        choices=lambda: sorted(PRESETS),
        shown="none",
    )
    # Semi-supervised (M2): the labelled images, drawn class-balanced (data/labelled.py); the
    # others train unlabelled (y = -1), their label summed out by the objective.
    labelled: int = setting(
        0,
        "semi-supervised: keep N class-balanced labels (N / classes per class, drawn with "
        "--label-seed), the other training images unlabelled; needs --num-classes",
        parse=NONNEGATIVE,
        shown="0: every label",
    )
    label_seed: int = setting(0, "seed of the draw of --labelled's images", parse=int)
    labelled_per_batch: int = setting(
        0,
        "semi-supervised: labelled images in every batch (cycled), beside batch size - M "
        "unlabelled; 0: they come in the epoch's shuffled order like the others",
        parse=NONNEGATIVE,
        shown="0: in the epoch's order",
    )
    # M2's classification term alpha * -log q(y | x) per labelled image of a batch (the loss
    # sums over images); None: the paper's alpha = 0.1 N on the mean over the labelled
    # images, i.e. 0.1 N / (labelled images an epoch shows). A run records the value used.
    alpha: float | None = setting(
        None,
        "semi-supervised: weight of the classification term alpha * -log q(y | x) per "
        "labelled image",
        parse=nonnegative_float,
        shown="the paper's 0.1 N / labelled images per epoch",
        keeps_run=(None,),
    )
    # The data (datasets.py); DatasetSpec's fields, with its defaults.
    dataset: str = setting(
        DatasetSpec.dataset,
        f"{USAGE}; folder: is torchvision's ImageFolder layout",
        parse=dataset_spec,
    )
    # folder: only: resize every image to image_size x image_size (0: keep the files' size,
    # the default; the command line takes a size, so --image-size 0 is refused).
    image_size: int = setting(
        DatasetSpec.image_size,
        "folder: resize every image to S x S",
        parse=POSITIVE,
        valid=NONNEGATIVE.check,
        shown="keep the size",
    )
    # folder: only: every image one channel (PIL's luma). Off: a folder keeps its files'
    # channels (grayscale files 1, colour files 3). Runs recorded before it existed on folder:
    # data converted to grayscale, and keep doing so (LEGACY_DEFAULTS).
    grayscale: bool = setting(
        DatasetSpec.grayscale,
        "folder: make every image one channel (ITU-R 601-2 luma); without it a folder keeps "
        "its files' channels: grayscale files 1, colour files 3",
    )
    # folder:/tensor: only: the test set; "" = a fixed-seed split of test_fraction of the images.
    test_dataset: str = setting(
        DatasetSpec.test_dataset,
        "folder:/tensor: data: the test set, folder:PATH or tensor:FILE",
        parse=user_dataset,
        shown="a fixed-seed split of --test-fraction",
    )
    test_fraction: float = setting(
        DatasetSpec.test_fraction,
        "folder:/tensor: data without --test-dataset: the share of images in the test set, "
        "chosen with a fixed seed",
        parse=fraction,
    )

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        check_settings(self)

    def objective(self, semi_supervised: bool = False) -> Objective:
        """The training objective these settings name (``elbo``, ``num_particles``, and for
        ``enum`` the classification weight ``alpha``; None: 0). ``semi_supervised``: what
        ``elbo="auto"`` is for (:func:`resolve_elbo`)."""
        name = resolve_elbo(self.elbo, semi_supervised)
        if name == EnumELBO.name:
            return EnumELBO(self.num_particles, alpha=self.alpha or 0.0)
        return make_objective(name, self.num_particles)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """The config a checkpoint or config.json recorded, those written before the renames
        included (``LEGACY_KEYS``); a field it lacks takes its default."""
        d = dict(d)
        for old, new in LEGACY_KEYS.items():
            if old in d:
                value = d.pop(old)
                if new is not None:
                    d.setdefault(new, value)
        for name, value_for in LEGACY_DEFAULTS.items():
            if name not in d:
                value = value_for(d)
                if value is not None:
                    d[name] = value
        return cls(**_known_fields(cls, d))


def resolve_elbo(elbo: str, semi_supervised: bool) -> str:
    """``elbo`` with "auto" resolved: "enum" for the semi-supervised VAE, else "trace"."""
    if elbo != "auto":
        return elbo
    return EnumELBO.name if semi_supervised else "trace"


def check_semi_supervised(config: TrainConfig, model: VAEConfig) -> None:
    """One-line ValueErrors for semi-supervised settings that do not fit together (before any
    data is read; the draw itself checks --labelled against the data)."""
    if config.labelled and not model.num_classes:
        raise ValueError(
            f"--labelled {config.labelled} needs labels: add --num-classes 10 (or --num-classes "
            "auto, the data's classes)"
        )
    if config.labelled and not model.semi_supervised:
        raise ValueError(
            f"--labelled {config.labelled} needs the semi-supervised VAE: build it with a "
            "classifier q(y | x) (classifier='conv' or 'mlp'; --classifier)"
        )
    if config.labelled_per_batch and not config.labelled:
        raise ValueError("--labelled-per-batch needs --labelled N (the labelled images)")
    if config.labelled_per_batch >= config.batch_size:
        raise ValueError(
            f"--labelled-per-batch {config.labelled_per_batch} leaves no room for unlabelled "
            f"images in a batch of {config.batch_size}; use fewer than {config.batch_size}"
        )
    objective = config.objective(model.semi_supervised)
    if model.semi_supervised and not objective.enumerates:
        raise ValueError(
            f"the semi-supervised VAE sums its missing labels out: train it with --elbo enum "
            f"(or auto), not {config.elbo}"
        )


def resolve_alpha(config: TrainConfig, num_images: int, labelled_per_epoch: int) -> float:
    """The classification weight: ``config.alpha``, or the paper's (semi_supervised_alpha)."""
    if config.alpha is not None:
        return config.alpha
    return semi_supervised_alpha(num_images, labelled_per_epoch)


# Keys of train_configs recorded before: old name -> field (None: dropped, it was never read).
LEGACY_KEYS: dict[str, str | None] = {"binarize": "data_mode", "extra": None}


def _folder_was_grayscale(d: Mapping[str, Any]) -> bool | None:
    """folder: made every image grayscale before --grayscale existed: a run recorded then on
    folder: data (or a folder: test set) keeps its grayscale images. None: the field's default."""
    names = (d.get("dataset") or "", d.get("test_dataset") or "")
    return True if any(n.startswith("folder:") for n in names) else None


# Fields recorded runs lack whose value for them is not the field's default: name -> the value
# for a recorded dict (None: the default).
LEGACY_DEFAULTS = {"grayscale": _folder_was_grayscale}

# What a resumed run may change: the length of the run, where and how it runs, and what it
# evaluates (--test-iw-samples). The rest (model, data, optimizer, objective, seed) is the run's.
RESUMABLE = tuple(name for name, (_, s) in settings_of(TrainConfig).items() if s.resumable)
# The flags a resumed run may change (--out is not among them: it names the run).
RESUME_FLAGS = ", ".join(
    flag_of(name, s)
    for name, (_, s) in settings_of(TrainConfig).items()
    if s.resumable
    if name != "out"
)


def resume_settings(
    saved: TrainConfig, changes: Mapping[str, object], model: VAEConfig | None = None
) -> TrainConfig:
    """The settings of a resumed run: the run's own ``saved``, with the resumable ones of
    ``changes`` (field name -> value; TrainConfig's fields, and VAEConfig's when the run's
    ``model`` is given). ValueError naming, by flag and field, every other setting whose value
    differs from the run's; a value in the setting's ``keeps_run`` ("auto") means the run's.

    The one check of both entry points: ``pyro-vae train --resume`` passes the options typed
    (and --data-dir, --device, --out), ``pyro_vae.train(..., resume=True)`` every field of the
    TrainConfig it was given."""
    tables: dict[str, tuple[Any, Any]] = {
        name: (saved, s) for name, (_, s) in settings_of(TrainConfig).items()
    }
    if model is not None:
        tables.update({name: (model, s) for name, (_, s) in settings_of(VAEConfig).items()})
    unknown = sorted(set(changes) - set(tables))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for a resumed run; known: {sorted(tables)}")
    differ = []
    for name, (config, s) in tables.items():
        if name not in changes or s.resumable:
            continue
        value, own = changes[name], getattr(config, name)
        if _same(value, own) or any(_same(value, k) for k in s.keeps_run):
            continue
        where = f"{type(config).__name__}.{name}"
        differ.append(f"{flag_of(name, s)} {shown(value)} ({where}; the run has {shown(own)})")
    if differ:
        raise ValueError(
            f"--resume keeps the run's settings, but {', '.join(differ)}; drop "
            f"{'it' if len(differ) == 1 else 'them'} (only {RESUME_FLAGS} may change), or "
            "train a new run with another --out"
        )
    given = {k: v for k, v in changes.items() if k in RESUMABLE}
    return TrainConfig.from_dict({**saved.to_dict(), **given})


def _same(a: object, b: object) -> bool:
    """Equal values, a recorded list and a given tuple of the same items included."""
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return tuple(a) == tuple(b)
    return a == b
