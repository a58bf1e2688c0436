"""The settings of a training run, as a typed dataclass (the CLI's flags).

A checkpoint stores them as a plain dict, so a run can be rebuilt from its directory alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pyro_vae.data.datasets import DEFAULT_TEST_FRACTION
from pyro_vae.models.config import _known_fields

# The data modes of TrainConfig.data_mode (the CLI's --data-mode).
DATA_MODES = ("auto", "dynamic", "threshold", "dequantize", "none")
# Training objectives (elbo.OBJECTIVES), training steps (step.py) and learning-rate schedules.
ELBO_CHOICES = ("trace", "meanfield", "iwae")
STEP_CHOICES = ("auto", "eager", "fx", "compiled", "cudagraph")
LR_SCHEDULES = ("constant", "staged")
DECODER_BIAS_INITS = ("default", "data-mean")


# What a resumed run may change: the length of the run, where and how it runs, and what it
# evaluates (--test-iw-samples). The rest (model, data, optimizer, objective, seed) is the run's.
RESUMABLE = ("epochs", "data_dir", "device", "out", "step", "tensorboard", "test_iw_samples")


@dataclass
class TrainConfig:
    """Options of one training run (the CLI's flags)."""

    data_dir: str = "data"
    out: str = "runs/vae"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    # Adam's betas and eps (torch's defaults; the IWAE paper's preset sets eps = 1e-4).
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # "constant", or "staged": stage i = 0, 1, ... runs 3^i epochs at lr * 10^(-i/7), the IWAE
    # paper's schedule (a torch MultiStepLR; its state is in the checkpoint).
    lr_schedule: str = "constant"
    # "trace" = Trace_ELBO (Monte Carlo KL), "meanfield" = TraceMeanField_ELBO (analytic KL),
    # "iwae" = the importance-weighted bound L_K with K = num_particles (RenyiELBO, alpha=0).
    elbo: str = "trace"
    num_particles: int = 1
    # How the uint8 pixels k become the data (one option, so no two settings can contradict):
    # "dynamic": a fresh Bernoulli(k / 255) draw each time a training batch is used;
    # "threshold": k / 255 > 0.5; "dequantize": a fresh (k + u) / 256, u ~ U(0, 1), per batch
    # (densities then bound the 8-bit data's likelihood); "none": the raw values k / 255.
    # "auto" resolves to "dynamic" for binary likelihoods, "none" for the discretized one and
    # "dequantize" for densities. The run records the resolved mode (runs made when "auto"
    # meant "none" for densities recorded "none", and still load that way). Runs made before
    # the rename recorded it as "binarize".
    data_mode: str = "auto"
    seed: int = 0
    device: str = "auto"
    # Use only the first N training / test images (0 = all); for quick runs and tests.
    train_subset: int = 0
    test_subset: int = 0
    # The decoder's output bias at the start: torch's initialization ("default"), or the
    # logit of the training set's mean pixel ("data-mean", as the IWAE paper's code does).
    decoder_bias: str = "default"
    # How a step runs: "eager" (Pyro every step), "fx" / "compiled" (traced once and replayed,
    # compiled by inductor) or "cudagraph"; "auto" picks (step.resolve_step).
    step: str = "auto"
    # Also score the test set by the IW bound -L_K with this K (0: no) at the end of every
    # stage of a staged schedule (every epoch with a constant rate) and at the last epoch.
    test_iw_samples: int = 0
    # Also log the epoch's scalars and image grids for TensorBoard (needs the [tensorboard] extra).
    tensorboard: bool = False
    # The preset the run was made from (presets.PRESETS); its values are the fields above.
    preset: str | None = None
    # The data (datasets.py): "mnist", "fashion-mnist", "kmnist", "folder:PATH" or "tensor:FILE".
    dataset: str = "mnist"
    # folder: only: resize every image to image_size x image_size (0: keep the files' size).
    image_size: int = 0
    # folder:/tensor: only: the test set; "" = a fixed-seed split of test_fraction of the images.
    test_dataset: str = ""
    test_fraction: float = DEFAULT_TEST_FRACTION

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        for name, choices in (
            ("elbo", ELBO_CHOICES),
            ("step", STEP_CHOICES),
            ("lr_schedule", LR_SCHEDULES),
            ("decoder_bias", DECODER_BIAS_INITS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.test_iw_samples < 0:
            raise ValueError(f"test_iw_samples must be 0 (off) or more, got {self.test_iw_samples}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.data_mode not in DATA_MODES:
            raise ValueError(
                f"data_mode must be one of {', '.join(DATA_MODES)}, got {self.data_mode!r}"
            )
        for name in ("epochs", "batch_size", "num_particles"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (all) or more, got {getattr(self, name)}")
        if self.image_size < 0:
            raise ValueError(f"image_size must be 0 (keep) or more, got {self.image_size}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config a checkpoint or config.json recorded, those written before the renames
        included (``LEGACY_KEYS``); a field it lacks takes its default."""
        d = dict(d)
        for old, new in LEGACY_KEYS.items():
            if old in d:
                value = d.pop(old)
                if new is not None:
                    d.setdefault(new, value)
        return cls(**_known_fields(cls, d))


# Keys of train_configs recorded before: old name -> field (None: dropped, it was never read).
LEGACY_KEYS: dict[str, str | None] = {"binarize": "data_mode", "extra": None}
