"""Your own Pyro model and guide, for the library's trainer, NLL and metrics: :class:`UserModel`.

The objectives need per-image terms, so the contract is Pyro's usual one for amortized
inference, checked at the first step with a one-line error each (``objectives.check_traces``):
every sample site lies in a plate ``"data"`` over the batch at dim -1 (no global latent), the
model observes x there, and the guide draws every latent site of the model, reparameterized,
with the model's event shape, and nothing else.

The parameters are the adapter's own, whatever ``pyro.settings`` say, so checkpoints are plain
state dicts and the traced steps can swap them (``torch.func.functional_call``); every call of
the model or guide runs on a scratch param store, so nothing of the session's global store is
read or written:

- the model and guide as ``PyroModule`` s: their parameters, as for :class:`pyro_vae.VAE`;
- plain functions: the ``nn.Module`` s they use (``pyro.module`` statements or closures) go
  in ``modules``; their ``pyro.param`` statements are found by :meth:`UserModel.setup` (the
  trainer calls it on a first batch, before the optimizer is made) and served from then on
  from the adapter's own parameters, never from Pyro's global param store.

A parameter reached otherwise (a module not given, a tensor that requires grad) is refused by
``setup`` in one line: the trainer would neither train nor save it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn
from torch.distributions import constraints, transform_to

from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.models.vae import KLWeight


@dataclass
class UserModelConfig:
    """What a run records about a user's model (its weights need the model rebuilt in Python)."""

    name: str
    x_dim: int | None = None  # pixels per image, from the data at setup
    num_classes: int = 0  # > 0: the model and guide take labels y
    data_kind: str = "binary"  # the data its observed site scores (Likelihood.data_kind)
    sites: list[str] = field(default_factory=list)  # latent sites, in the guide's order
    params: list[str] = field(default_factory=list)  # the pyro.param names it serves

    @property
    def semi_supervised(self) -> bool:
        """Never: the library's label site and classifier are the VAE's (``VAE(classifier=)``)."""
        return False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _DataOf(Likelihood):
    """Which data a user's model scores (the data pipeline's mode and its support check); the
    model's own observed site is the likelihood."""

    def __init__(self, data_kind: str, name: str) -> None:
        super().__init__()
        self.data_kind = data_kind
        self.name = name


class _ServeParams(Messenger):
    """``pyro.param`` statements of the names the adapter owns get its parameter (constrained
    as declared), so no statement reaches Pyro's global param store."""

    def __init__(self, owner: UserModel) -> None:
        super().__init__()
        self.owner = owner

    def _pyro_param(self, msg: dict) -> None:
        key = self.owner._keys.get(msg["name"])
        if key is None:
            return
        unconstrained = self.owner.params[key]
        value = transform_to(self.owner._constraints[msg["name"]])(unconstrained)
        value.unconstrained = weakref.ref(unconstrained)  # what classic SVI collects
        msg["value"] = value
        msg["done"] = True


class _ScaleLatents(Messenger):
    """The KL weight beta as a scale on every latent sample site (the observed ones keep
    theirs): the beta-VAE's objective for any model, as ``VAE`` has it."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.weight * msg["scale"]


class _RecordParams(Messenger):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict] = []

    def _pyro_post_param(self, msg: dict) -> None:
        self.messages.append(msg)


def _key(name: str) -> str:
    return name.replace(".", "__")  # module attribute names may not hold a dot


class UserModel(nn.Module):
    """A Pyro ``model(x, y=None)`` and ``guide(x, y=None)`` of your own, for ``pyro_vae.train``,
    ``evaluate_log_likelihood``, ``evaluate_elbo`` and ``active_units``::

        def model(x):
            with pyro.plate("data", x.shape[0]):
                ...
                pyro.sample("x", likelihood, obs=x)

        user = UserModel(model, guide, modules={"decoder": decoder, "encoder": encoder})
        train(user, TrainConfig(out="runs/mine"))  # resume: train(UserModel(...), ..., resume=True)

    x: [B, x_dim] images as the data pipeline makes them for ``data_kind`` (a
    ``Likelihood.data_kind``, or a ``Likelihood`` whose data the model scores: "binary" = 0/1
    pixels); with ``num_classes > 0`` the model and guide are also called with labels y [B].
    ``name`` is recorded with the run. The KL weight (``kl_weight``, ``--kl-weight``, the
    warm-up) scales every latent site of both. The figures and the explorer need a
    :class:`pyro_vae.VAE` and say so.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        *,
        modules: Mapping[str, nn.Module] | None = None,
        name: str = "user-model",
        num_classes: int = 0,
        data_kind: str | Likelihood = "binary",
    ) -> None:
        super().__init__()
        for role, fn in (("model", model), ("guide", guide)):
            if not callable(fn):
                raise TypeError(f"the {role} must be a callable, got {type(fn).__name__}")
        # Modules are registered, so their parameters are this module's; functions are not.
        self.user_model = model if isinstance(model, nn.Module) else None
        self.user_guide = guide if isinstance(guide, nn.Module) else None
        self._fns = (model, guide)  # a tuple: no second registration of a module
        self.nets = nn.ModuleDict(dict(modules or {}))
        self.params = nn.ParameterDict()
        self._keys: dict[str, str] = {}
        self._constraints: dict[str, Any] = {}
        self.kl_weight_buffer = KLWeight()
        kind = data_kind if isinstance(data_kind, Likelihood) else _DataOf(data_kind, name)
        self.likelihood = kind
        self.config = UserModelConfig(name, num_classes=int(num_classes), data_kind=kind.data_kind)
        self._latent_sizes: dict[str, int] = {}

    # What the library calls: the model and guide with the adapter's parameters and weight.

    def _run(self, fn: Callable, x: Tensor, y: Tensor | None) -> Any:
        args = (x,) if y is None else (x, y)
        # A scratch param store for the call: in Pyro's default mode a PyroModule swaps in a
        # stored tensor of its name (a PyroParam another model trained, say), and pyro.module
        # statements would fill the session's store. The parameters are the modules' own.
        with (
            pyro.get_param_store().scope(),
            _ServeParams(self),
            _ScaleLatents(self.kl_weight_buffer.value),
        ):
            return fn(*args)

    def model(self, x: Tensor | None = None, y: Tensor | None = None) -> Any:
        """The user's model, its ``pyro.param`` statements served and latents scaled by beta."""
        return self._run(self._fns[0], x, y)

    def guide(self, x: Tensor | None = None, y: Tensor | None = None) -> Any:
        """The user's guide, as :meth:`model`."""
        return self._run(self._fns[1], x, y)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def sites(self) -> list[str]:
        """The latent sites, in the guide's order (known after :meth:`setup`)."""
        return list(self.config.sites)

    @property
    def semi_supervised(self) -> bool:
        return self.config.semi_supervised

    @property
    def kl_weight(self) -> float:
        return float(self.kl_weight_buffer.value)

    @kl_weight.setter
    def kl_weight(self, value: float) -> None:
        self.kl_weight_buffer.set(value)

    def custom_objects(self) -> dict[str, str]:
        """What the model and guide were, for the run's record (they cannot be rebuilt)."""
        return {
            role: getattr(fn, "__qualname__", type(fn).__name__)
            for role, fn in zip(("model", "guide"), self._fns, strict=True)
        }

    def sample_width(self) -> int:
        """The NLL's chunk size guess: the widest of the image and the latent sizes."""
        return max(self.config.x_dim or 1, *self._latent_sizes.values(), 1)

    # Finding the parameters: one run of the guide and the replayed model on a batch.

    def setup(self, x: Tensor, y: Tensor | None = None) -> UserModel:
        """Finds the model's and guide's parameters on a batch x [B, D] (and labels y): each
        ``pyro.param`` becomes one of this module's parameters, initialized as the statement
        says. Raises ValueError, one line, for a parameter it cannot own. Called once, by the
        trainer before the optimizer is made (later calls only check)."""
        x = x.flatten(1) if x.dim() > 2 else x
        self.config.x_dim = int(x.shape[-1])
        labels = y if self.config.num_classes else None
        owned = {id(p) for p in self.parameters()}
        with _scratch():
            recorder = _RecordParams()
            with recorder:
                self._traces(x, labels, serve=False)
            for msg in recorder.messages:
                self._own(msg, owned)
        with _scratch():
            model_trace, guide_trace = self._traces(x, labels, serve=True)
            self._check_leaves(model_trace, guide_trace)
        latent = [
            s for s in guide_trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]
        ]
        self.config.sites = [s["name"] for s in latent]
        self._latent_sizes = {s["name"]: int(s["fn"].event_shape.numel()) for s in latent}
        self.config.params = list(self._keys)
        return self

    def _traces(self, x: Tensor, y: Tensor | None, serve: bool):
        """The guide's trace and the model's replayed on it; ``serve=False`` runs the user's
        functions as written (their ``pyro.param`` statements go to the scratch store)."""

        def as_written(fn: Callable) -> Callable:
            return lambda x, y: fn(x) if y is None else fn(x, y)

        model, guide = (self.model, self.guide) if serve else map(as_written, self._fns)
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)

    def _own(self, msg: dict, owned: set[int]) -> None:
        name, value = msg["name"], msg["value"]
        init = msg["args"][1] if len(msg["args"]) > 1 else None
        unconstrained = getattr(value, "unconstrained", None)
        unconstrained = unconstrained() if callable(unconstrained) else value
        if {id(value), id(init), id(unconstrained)} & owned or name in self._keys:
            return  # a parameter of a module given (or one found already)
        if "$$$" in name or isinstance(init, nn.Parameter):
            module = name.split("$$$")[0]
            raise ValueError(
                f"the {self.name} parameter {name!r} belongs to a module UserModel was not "
                f"given; pass it, UserModel(..., modules={{{module!r}: module}}), so the "
                "trainer trains and saves it"
            )
        key = _key(name)
        self.params[key] = nn.Parameter(unconstrained.detach().clone())
        self._keys[name] = key
        self._constraints[name] = msg["kwargs"].get("constraint", constraints.real)

    def _check_leaves(self, model_trace: poutine.Trace, guide_trace: poutine.Trace) -> None:
        """Every tensor the log-density's gradient reaches must be one of this module's
        parameters: anything else would go untrained and unsaved."""
        try:
            total = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
        except Exception:  # noqa: BLE001 - a broken model: the first step says how, in one line
            return
        if not torch.is_tensor(total) or not total.requires_grad:
            return
        owned = {id(p) for p in self.parameters()}
        seen, stack = set(), [total.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            leaf = getattr(node, "variable", None)
            if leaf is not None and id(leaf) not in owned:
                raise ValueError(
                    f"the {self.name} model or guide uses a tensor of shape "
                    f"{tuple(leaf.shape)} that requires grad but is no parameter of UserModel "
                    "(a module not passed in modules=, or a tensor made outside pyro.param); "
                    "pass its module, or make it a pyro.param"
                )
            stack.extend(next_fn for next_fn, _ in node.next_functions)


@contextlib.contextmanager
def _scratch() -> Iterator[None]:
    """A throw-away param store and RNG: setup leaves the user's session as it was."""
    with pyro.get_param_store().scope(), torch.random.fork_rng():
        yield
