"""A run directory: its files, and the trained model rebuilt from them.

``pyro-vae train`` (or :func:`pyro_vae.train`) writes ``config.json``, ``metrics.jsonl`` (one
line per epoch), ``checkpoint.pt`` and ``figures/``. A run made with registry names rebuilds
from its checkpoint alone; a run made with the user's own prior or likelihood objects loads
into a VAE the user rebuilt with the same objects: ``load_vae(run_dir, vae=my_vae)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch

from pyro_vae.data.datasets import (
    DatasetSpec,
    check_fits_data,
    check_same_dataset,
    record_image_shape,
)
from pyro_vae.data.images import ImageData
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.user_model import UserModel
from pyro_vae.models.vae import VAE
from pyro_vae.runs.checkpoint import CheckpointError, load_checkpoint
from pyro_vae.runs.options import TrainConfig

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"


def read_metrics(run_dir: str | os.PathLike, up_to: int | None = None) -> list[dict]:
    """The rows of ``RUN_DIR/metrics.jsonl`` (none when the file is missing), up to an epoch."""
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if up_to is None or r["epoch"] <= up_to]


def write_metrics(run_dir: str | os.PathLike, rows: list[dict]) -> None:
    """Replaces ``metrics.jsonl`` by ``rows`` (on resume: drops epochs past the checkpoint)."""
    (Path(run_dir) / METRICS_NAME).write_text("".join(json.dumps(r) + "\n" for r in rows))


def append_metrics(run_dir: str | os.PathLike, row: dict) -> None:
    """Adds one epoch's line, flushed, so a user tailing the file sees it at once."""
    with open(Path(run_dir) / METRICS_NAME, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``path`` through a temporary file renamed over it: a reader (or a second writer)
    never sees half a file. For files a command that does not hold the run's lock writes into
    a run directory (``eval.json``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's is 0600: as readable as a file written directly
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_config(run_dir: str | os.PathLike, record: dict) -> None:
    (Path(run_dir) / CONFIG_NAME).write_text(json.dumps(record, indent=2))


def check_fits(vae: VAE, saved: VAEConfig, objects: dict | None = None) -> None:
    """Raises CheckpointError when ``vae`` is not built like the run's model ``saved``: every
    VAEConfig field must match (it is what rebuilds the model: the shapes of the weights and
    the prior and likelihood they belong to)."""
    mine = vae.config
    diff = [
        f"{f.name} {getattr(mine, f.name)!r} (run: {getattr(saved, f.name)!r})"
        for f in dataclasses.fields(VAEConfig)
        if getattr(mine, f.name) != getattr(saved, f.name)
    ]
    if diff:
        raise CheckpointError(
            f"the VAE passed is not built like the run's: {', '.join(diff)}; rebuild it with "
            f"the run's settings{_objects_hint(objects)}"
        )


def check_fits_user_model(model: object, ckpt: dict, where: str | os.PathLike) -> None:
    """Raises CheckpointError unless a run and the model passed to resume it are both the
    user's own (a :class:`UserModel`) with the same name and labels; the weights' names and
    shapes are checked when they load (:func:`load_state`)."""
    record = ckpt.get("user_model")
    if record is None:
        raise CheckpointError(
            f"{where} trained a VAE, not your model {getattr(model, 'name', '')!r}; resume it "
            "with the VAE it was built as (or None), or train your model into another --out"
        )
    if not isinstance(model, UserModel):
        raise CheckpointError(
            f"{where} trained your own Pyro model {record['name']!r}: rebuild it and pass it, "
            "train(UserModel(model, guide, ...), config, resume=True)"
        )
    mine = model.config
    diff = [
        f"{key} {getattr(mine, key)!r} (run: {record[key]!r})"
        for key in ("name", "num_classes", "data_kind")
        if getattr(mine, key) != record[key]
    ]
    if diff:
        raise CheckpointError(
            f"the model passed is not the run's: {', '.join(diff)}; rebuild it as the run was"
        )


def refuse_user_model_run(ckpt: dict, where: str | os.PathLike) -> None:
    """CheckpointError for a run of the user's own model where a VAE is needed (the command
    line, the figures, the explorer): its model and guide are Python code, not settings."""
    record = ckpt.get("user_model")
    if record is not None:
        raise CheckpointError(
            f"{where} trained your own Pyro model {record['name']!r} (pyro_vae.UserModel), "
            "which only Python can rebuild; figures, samples and the explorer need a "
            "pyro_vae.VAE; resume or score it with train(UserModel(...), resume=True) and "
            "pyro_vae.evaluate_log_likelihood"
        )


def _objects_hint(objects: dict | None) -> str:
    custom = {k: v for k, v in (objects or {}).items() if v}
    return "".join(f", {k} {v}" for k, v in custom.items())


def load_state(
    vae: VAE | UserModel, state: dict[str, torch.Tensor], where: str | os.PathLike
) -> None:
    """``vae.load_state_dict(state)``, with a one-line error when the weights do not fit."""
    mine = vae.state_dict()
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    shapes = [
        f"{k} {tuple(state[k].shape)} (VAE: {tuple(mine[k].shape)})"
        for k in sorted(set(mine) & set(state))
        if state[k].shape != mine[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}"
            for label, v in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if v
        ]
        fix = (
            "build it with the same prior and likelihood objects as the run"
            if isinstance(vae, VAE)
            else "rebuild your model with the same modules and pyro.param statements"
        )
        raise CheckpointError(
            f"the weights in {where} do not fit the {type(vae).__name__} passed "
            f"({'; '.join(parts)}); {fix}"
        )
    vae.load_state_dict(state)


def load_vae(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu", vae: VAE | None = None
) -> tuple[VAE, dict]:
    """The trained VAE of a run, on ``device``, and its checkpoint dict.

    ``vae``: for a run trained with prior or likelihood objects (not registry names), the VAE
    rebuilt with the same objects; its weights are replaced by the run's. Without it such a
    run cannot be rebuilt, and the error says so.
    """
    ckpt = load_checkpoint(run_dir)
    refuse_user_model_run(ckpt, run_dir)
    saved = VAEConfig.from_dict(ckpt["vae_config"])
    objects = ckpt.get("objects", {})
    if vae is None:
        if "custom" in (saved.prior, saved.likelihood, saved.network):
            raise CheckpointError(
                f"{run_dir} was trained with a custom{_objects_hint(objects)}: rebuild that VAE in "
                "Python and pass it, pyro_vae.load_vae(run_dir, vae=VAE(prior=..., likelihood=..., "
                "encoder=..., decoder=...))"
            )
        vae = VAE.from_config(saved)
    else:
        check_fits(vae, saved, objects)
    load_state(vae, ckpt["model"], run_dir)
    return vae.to(device), ckpt


def load_run(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    test_subset: int | None = None,
    vae: VAE | None = None,
    *,
    dataset: dict | None = None,
    allow_other_dataset: bool = False,
) -> tuple[VAE, dict, ImageData]:
    """A trained run, its checkpoint and its test set binarized as in training, on ``device``.

    ``test_subset``: the first N test images (0 = all); None = the run's own setting. ``vae``:
    as for :func:`load_vae`. ``dataset``: DatasetSpec fields (``dataset``, ``image_size``,
    ``test_dataset``, ``test_fraction``) that replace the run's; data other than the run's
    recorded ones (another name, or another test set hash) are refused unless
    ``allow_other_dataset``. A model never takes images of another size.
    """
    vae, ckpt = load_vae(run_dir, device, vae)
    tc = TrainConfig.from_dict(ckpt["train_config"])
    spec = DatasetSpec.of(tc, **(dataset or {}))
    if not allow_other_dataset:  # before loading: another dataset may not even be on disk
        check_same_dataset(ckpt.get("dataset"), {"name": spec.dataset}, str(run_dir))
    data = ImageData.load(
        data_dir,
        vae.likelihood,
        tc.data_mode,
        device,
        train_subset=1,
        test_subset=tc.test_subset if test_subset is None else test_subset,
        dataset=spec,
    )
    # The channels first: a grayscale run given colour images says so, whatever the hash.
    check_fits_data(vae.config, data.dataset, data.image_shape)
    if not allow_other_dataset:
        check_same_dataset(ckpt.get("dataset"), data.dataset, str(run_dir))
    return vae, ckpt, data


def run_image_shape(ckpt: dict) -> tuple[int, int, int] | None:
    """The (C, H, W) of the images a run was trained on (C = 1 for runs from before colour);
    None for a run from before datasets were recorded (square images: 28 x 28 for MNIST)."""
    return record_image_shape(ckpt.get("dataset"))
