"""``Sequential``: the model, its parameters, training, evaluation and
inference. All computation happens in the Rust engine; this module checks
arguments, converts data and reports progress."""

from __future__ import annotations

import os
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Callable, TypeVar, cast

import numpy as np

from . import _core, _graph, _parallel, losses
from . import optim as _optim
from ._data import as_features, as_target, untorch
from ._optimizer import CHECKPOINT_PREFIX
from ._progress import EpochProgress
from ._safetensors import file_path, save_file
from .callbacks import Callback
from .layers import Dense, Layer
from .lr_scheduler import LRScheduler, ReduceLROnPlateau
from .parameter import Parameter

__all__ = ["BaseModel", "Sequential", "Parameter", "History", "gradcheck"]

_M = TypeVar("_M", bound="BaseModel")

_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
_METRICS = ("accuracy",)
DEFAULT_EVAL_BATCH = 1024


class _Checkpoints:
    """The model file functions :meth:`Sequential.save` and pickling use.

    The file format is :mod:`ferrograd.serialization`'s, which sits above
    this module (it builds models, optimizers and schedulers); it hands its
    functions over with :func:`_register_checkpoints` when it is imported,
    which ``import ferrograd`` does."""

    def __init__(
        self,
        save: Callable[..., None],
        dumps: Callable[[BaseModel], bytes],
        loads: Callable[[bytes], Any],
    ) -> None:
        self.save, self.dumps, self.loads = save, dumps, loads


_registered: _Checkpoints | None = None


def _register_checkpoints(
    save: Callable[..., None],
    dumps: Callable[[BaseModel], bytes],
    loads: Callable[[bytes], Any],
) -> None:
    """Called by :mod:`ferrograd.serialization` when it is imported."""
    global _registered
    _registered = _Checkpoints(save, dumps, loads)


def _checkpoints() -> _Checkpoints:
    if _registered is None:  # `import ferrograd` imports serialization: not reached
        raise RuntimeError("ferrograd.serialization is not imported")
    return _registered


def _dtype_name(dtype: Any) -> str:
    if dtype is None:
        raise ValueError('dtype must be "float32" or "float64", got None')
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _DTYPES:
        raise ValueError(f'unknown dtype {dtype!r}; expected "float32" or "float64"')
    return name


def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _length(x: Any) -> int:
    """The sample count of an array, or of a list of them (one per input or output)."""
    return len(x[0]) if isinstance(x, list) else len(x)


def _rows(x: Any, rows: slice) -> Any:
    """Some samples of an array, or of each array of a list."""
    return [a[rows] for a in x] if isinstance(x, list) else x[rows]


def _check_split(validation_split: Any, with_data: bool) -> float:
    """``fit``'s ``validation_split``: a number in [0, 1), and not given with
    ``validation_data`` (``with_data``)."""
    try:
        split = float(validation_split)
    except (TypeError, ValueError):
        raise TypeError(f"validation_split must be a number, got {validation_split!r}") from None
    if not 0.0 <= split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {split}")
    if split and with_data:
        raise ValueError("pass validation_data or validation_split, not both")
    return split


@dataclass
class _FitSetup:
    """``fit``'s checked arguments, other than the data."""

    loss: Any  # a losses.Loss, or a list of them (graph models)
    spec: str
    loss_weights: list[float] | None
    opt: _optim.Optimizer
    epochs: int
    initial_epoch: int
    batch_size: int
    shuffle: bool
    verbose: int
    stream: IO[str] | None
    callbacks: list[Any]
    scheduler: Any
    per_step: bool  # the scheduler steps inside the Rust epoch
    plateau: bool  # ReduceLROnPlateau
    metrics: tuple[str, ...]
    clip: tuple[float, float] | None
    diagnostics: bool
    plan: Any = None  # distributed._FitPlan: data-parallel training


@dataclass
class _FitData:
    """``fit``'s converted and checked data."""

    x: Any  # an array, or a list of them (graph models)
    y: Any
    weights: np.ndarray | None
    val: tuple[np.ndarray, Any] | None


class History:
    """What :meth:`Sequential.fit` returns: per-epoch metrics, Keras style.

    ``history`` maps ``"loss"``, ``"accuracy"``, ``"val_loss"``, ... (and
    ``"learning_rate"``, the epoch's first, with a scheduler or a learning
    rate callback) to lists with one value per epoch; ``epoch`` lists the epochs'
    0-based indices (as Keras). ``params`` holds ``epochs``, ``steps`` and
    ``verbose``. With ``fit(..., diagnostics=True)``, ``diagnostics`` maps
    each statistic (``"grad_norm"``, ``"weight_norm"``, ``"update_ratio"``
    per parameter; ``"dead_fraction"``, ``"saturated_fraction"`` per
    activation layer) to ``{name: [one value per epoch]}``. An
    :class:`~ferrograd.callbacks.EarlyStopping` sets ``stopped_epoch`` (the
    epoch after which training stopped, or ``None``) and ``best_epoch`` (the
    epoch whose weights it restored).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = {}
        self.diagnostics: dict[str, dict[str, list[float]]] = {}
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None

    def _append(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in metrics.items():
            self.history.setdefault(k, []).append(float(v))

    def _append_diagnostics(self, d: Mapping[str, Any] | None) -> None:
        if d is None:
            return
        diag = self.diagnostics
        for name, grad, weight, ratio in d["params"]:
            diag.setdefault("grad_norm", {}).setdefault(name, []).append(grad)
            diag.setdefault("weight_norm", {}).setdefault(name, []).append(weight)
            diag.setdefault("update_ratio", {}).setdefault(name, []).append(ratio)
        for layer, kind, fraction in d["activations"]:
            key = "dead_fraction" if kind == "dead" else "saturated_fraction"
            diag.setdefault(key, {}).setdefault(str(layer), []).append(fraction)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


class BaseModel:
    """What :class:`Sequential` and the graph :class:`Model` share:
    parameters, ``state_dict``, train/eval modes, the step API, ``fit``,
    ``evaluate``, ``predict``, files and pickling. Not made directly."""

    layers: list[Any]

    def _init_core(self, core: _core.Model, seed: int, dtype: np.dtype[Any]) -> None:
        """Adopts the engine's model: parameters, state and Python attributes."""
        self.seed = seed
        self.dtype: np.dtype[Any] = dtype
        self._core = core
        self._params = [
            Parameter(self, i, name, tuple(shape))
            for i, (name, shape) in enumerate(self._core.param_info())
        ]
        # Every state_dict entry, torch's order: (name, shape, "param" | "buffer" | "count").
        self._state = [(name, tuple(shape), kind) for name, shape, kind in self._core.state_info()]
        self._input_shape: tuple[int, ...] | None = None
        #: The mode :meth:`forward` uses when ``training`` is not given:
        #: ``False`` (evaluation) until :meth:`train` is called.
        self.training = False
        #: Epochs trained so far (by every ``fit`` call).
        self.epochs_trained = 0
        #: Set to ``True`` (by a callback) to end ``fit`` after the current epoch.
        self.stop_training = False
        #: The optimizer, scheduler and :class:`History` of the latest ``fit``.
        self.optimizer: _optim.Optimizer | None = None
        self.scheduler: Any = None
        self.history: History | None = None

    # ------------------------------------------------------------ mode

    def train(self: _M, mode: bool = True) -> _M:
        """Sets the default mode of :meth:`forward` / ``model(x)`` to training
        (dropout active, BatchNorm on batch statistics, updating its running
        statistics), or to evaluation with ``mode=False``; returns the model.
        An explicit ``forward(x, training=...)`` still wins. :meth:`fit`
        always trains in training mode and evaluates in evaluation mode, and
        :meth:`predict` / :meth:`evaluate` never change any state."""
        self.training = bool(mode)
        return self

    def eval(self: _M) -> _M:
        """Sets the default mode of :meth:`forward` to evaluation; returns the model."""
        return self.train(False)

    # ------------------------------------------------------------ parameters

    def parameters(self) -> list[Parameter]:
        """The parameters, in ``state_dict`` order (pass them to an optimizer)."""
        return list(self._params)

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """``(name, parameter)`` pairs, in ``state_dict`` order."""
        return ((p.name, p) for p in self._params)

    def num_params(self) -> int:
        """Total number of trainable scalars."""
        return int(self._core.num_params)

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of all parameters and buffers, keyed, shaped and ordered as
        in ``torch.nn.Sequential`` (per layer its parameters, then its
        buffers, such as BatchNorm's ``running_mean``, ``running_var`` and
        the int64 ``num_batches_tracked``)."""
        return OrderedDict(
            (name, self._core.get_state(i)) for i, (name, _, _) in enumerate(self._state)
        )

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, copy)`` of every buffer (non-trainable state), in ``state_dict`` order."""
        return (
            (name, self._core.get_state(i))
            for i, (name, _, kind) in enumerate(self._state)
            if kind != "param"
        )

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Replaces all parameters, all or nothing.

        Values may be numpy arrays, nested lists or torch tensors. Every key
        must be present, known, of the right shape and finite; otherwise a
        ``ValueError`` names the problem and the model is unchanged. With
        ``strict=False``, missing keys keep their current values and unknown
        keys are ignored.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state).__name__}")
        if not strict:
            known = {name for name, _, _ in self._state}
            current = self.state_dict()
            current.update({k: v for k, v in state.items() if k in known})
            state = current
        kinds = {name: kind for name, _, kind in self._state}
        items = []
        for name, v in state.items():
            if not isinstance(name, str):
                raise TypeError(f"state_dict keys must be strings, got {name!r}")
            arr = np.asarray(untorch(v))
            if arr.dtype.kind not in "biuf":
                raise TypeError(
                    f"state_dict entry {name!r} has dtype {arr.dtype}, expected numbers"
                )
            if kinds.get(name) == "count":
                if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
                    raise ValueError(f'state_dict entry "{name}" must hold integers (a count)')
                dtype: np.dtype[Any] = np.dtype(np.int64)
            else:
                dtype = self.dtype
            items.append((name, np.require(arr, dtype=dtype, requirements=["C", "A"])))
        self._core.load_state(items)

    # ------------------------------------------------------------ files

    def save_weights(self, path: str | os.PathLike[str]) -> None:
        """Writes the :meth:`state_dict` (weights and buffers, torch's names
        and layouts) as a safetensors file, atomically. torch reads it with
        ``model.load_state_dict(safetensors.torch.load_file(path))``. In a
        data-parallel job (:mod:`ferrograd.distributed`) every rank calls it,
        rank 0 writes, and the file is complete on return on every rank."""
        if _parallel.is_writer():
            save_file(self.state_dict(), path, {"format": "pt"})
        _parallel.barrier()

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Loads a safetensors file of weights: one :meth:`save_weights`
        wrote, one ``safetensors.torch.save_file(torch_model.state_dict(),
        path)`` wrote (float16 and bfloat16 are converted), or a file of
        :meth:`save` (its optimizer state is ignored). All or nothing, as
        :meth:`load_state_dict`: a bad file or a mismatch raises
        ``ValueError`` naming the keys, and the model is unchanged."""
        where = file_path(path)
        tensors, meta = _core.read_safetensors(where)
        weights = {
            k: v for k, v in tensors if not k.startswith(CHECKPOINT_PREFIX)
        } if "ferrograd" in meta else dict(tensors)  # fmt: skip
        try:
            self.load_state_dict(weights)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{where}: {e}") from None

    def save(
        self,
        path: str | os.PathLike[str],
        optimizer: _optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> None:
        """Writes everything needed to rebuild and resume the model into one
        safetensors file, atomically: the architecture (layer specs as JSON
        in the metadata), dtype, seed, epochs trained, weights and buffers,
        and, when given, the optimizer's state and hyper-parameters and a
        scheduler's state. Load it with :func:`ferrograd.load`; training
        resumed from it gives the weights of an uninterrupted run, bit for
        bit. In a data-parallel job (:mod:`ferrograd.distributed`) every
        rank calls it, rank 0 writes, and the file is complete and loadable
        on every rank when the call returns."""
        if _parallel.is_writer():
            _checkpoints().save(self, path, optimizer, scheduler)
        _parallel.barrier()

    # Pickle and copy.deepcopy go through the bytes of `save`, plus the
    # Python attributes (history, the latest optimizer, ...).
    _REBUILT = frozenset(
        {"_core", "_params", "_state", "layers", "seed", "dtype", "epochs_trained", "training"}
    )

    def __reduce__(self) -> tuple[Any, ...]:
        blob = _checkpoints().dumps(self)
        extra = {k: v for k, v in self.__dict__.items() if k not in self._REBUILT}
        return (_unpickle_model, (blob,), extra)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def zero_grad(self) -> None:
        """Sets all gradients to zero (gradients accumulate across backward calls)."""
        self._core.zero_grad()

    # ------------------------------------------------------------ step API

    def forward(self, x: Any, training: bool | None = None) -> np.ndarray:
        """The model's output for ``x`` (batch first).

        ``training`` defaults to :attr:`training` (see :meth:`train` /
        :meth:`eval`). In training mode dropout is active, BatchNorm uses the
        batch's statistics and updates its running statistics, and the pass
        is kept for :meth:`backward`.
        """
        if training is None:
            training = self.training
        xa = self._features(x, "x")
        out = self._core.forward(xa, bool(training))
        self._seen(xa)
        return cast(np.ndarray, out)  # one input, one output

    def __call__(self, x: Any, training: bool | None = None) -> Any:
        """``model(x)`` is :meth:`forward` on data, as torch's modules; on
        nodes of a graph model (:func:`ferrograd.Input` or layer outputs) it
        calls the whole model as a block of the graph being built (see
        ``_call_block``) and returns node(s)."""
        if _graph.holds_nodes(x):
            if training is not None:
                raise TypeError("training= applies to data, not to a model called on nodes")
            return self._call_block(x)
        return self.forward(x, training)

    def _call_block(self, nodes: Any) -> Any:
        raise NotImplementedError

    def backward(self, grad: Any) -> None:
        """Backpropagates ``grad`` (dloss/doutput of the last training-mode
        :meth:`forward`), adding into every parameter's gradient."""
        g = np.ascontiguousarray(np.asarray(grad), dtype=self.dtype)
        self._core.backward(g)

    # ------------------------------------------------------------ training

    def _metrics_for(self, loss: Any, metrics: Any) -> tuple[str, ...]:
        if metrics is None:
            return ("accuracy",) if loss.name != "mse" else ()
        if isinstance(metrics, str):
            metrics = (metrics,)
        out = []
        for m in metrics:
            if m not in _METRICS:
                raise ValueError(f"unknown metric {m!r}; available: {', '.join(_METRICS)}")
            if m == "accuracy" and loss.name == "mse":
                raise ValueError("accuracy is not defined for the mse loss")
            out.append(m)
        return tuple(out)

    def _loss(self, loss: Any) -> tuple[Any, str]:
        """``loss`` as the model's loss object(s) and the engine's spec."""
        loss_fn = losses.get(loss)
        return loss_fn, loss_fn._spec()

    def _loss_weights(self, loss_weights: Any) -> list[float] | None:
        """``loss_weights`` as one float per output (or ``None``)."""
        if loss_weights is None:
            return None
        raise ValueError("loss_weights applies to graph models (fg.Model) with several outputs")

    def _features(self, x: Any, what: str) -> Any:
        """The input data as the engine takes it."""
        return as_features(x, self.dtype, what)

    def _output_shape(self, xa: Any) -> list[int]:
        """The (single) output's per-sample shape for the data ``xa``."""
        return list(self._core.layer_shapes(list(xa.shape[1:]))[-1])

    def _seen(self, xa: Any) -> None:
        """Remembers the per-sample input shape last used (for ``summary``)."""
        if isinstance(xa, np.ndarray):
            self._input_shape = tuple(xa.shape[1:])

    def _prepare(self, x: Any, y: Any, loss: Any, what: str) -> tuple[Any, Any]:
        xa = as_features(x, self.dtype, what)
        ya = as_target(y, loss.name, self.dtype, len(xa))
        if ya.ndim == 1 and loss.name != "cross_entropy":
            if self._output_shape(xa) == [1]:
                ya = ya.reshape(-1, 1)
        return xa, ya

    def fit(
        self,
        X: Any,
        y: Any,
        loss: str | losses.Loss,
        optimizer: str | _optim.Optimizer,
        epochs: int = 1,
        batch_size: int = 32,
        shuffle: bool = True,
        validation_data: tuple[Any, Any] | None = None,
        validation_split: float = 0.0,
        metrics: Sequence[str] | None = None,
        verbose: int = 1,
        stream: IO[str] | None = None,
        callbacks: Sequence[Any] | None = None,
        initial_epoch: int = 0,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        class_weight: Any = None,
        sample_weight: Any = None,
        clip_grad_norm: float | None = None,
        diagnostics: bool = False,
        distributed: bool | str = False,
        loss_weights: Any = None,
    ) -> History:
        """Trains the model; returns a :class:`History`.

        Parameters
        ----------
        X, y:
            Training data, batch first. ``X`` may be uint8 (e.g. raw pixels,
            with a :class:`~ferrograd.layers.Rescaling` layer), float32 or
            float64; it is converted batch by batch, never copied whole.
            ``y``: integer class labels (``(N,)``) or targets of the output's
            shape.
        loss:
            A :mod:`ferrograd.losses` instance or name.
        optimizer:
            A :mod:`ferrograd.optim` optimizer built from this model's
            parameters, or a name (``"adam"``, ``"sgd"``, ...) for defaults.
        epochs, batch_size, shuffle:
            As in Keras.
        validation_data, validation_split:
            Data to evaluate after each epoch: a pair ``(X_val, y_val)``, or
            the fraction of the training data (taken from its end, before
            shuffling) to hold out.
        metrics:
            ``("accuracy",)`` by default where it applies (classification losses).
        verbose:
            0 silent, 1 progress bar with an ETA on a terminal (a line per
            epoch otherwise), 2 a line per epoch.
        callbacks:
            :mod:`ferrograd.callbacks` instances (Keras's protocol; epochs
            are 0-based). A callback may set ``model.stop_training = True``.
        initial_epoch:
            The first epoch's index (Keras): epochs ``initial_epoch ..
            epochs - 1`` are trained.
        scheduler, scheduler_interval:
            A :mod:`ferrograd.optim.lr_scheduler` scheduler of this
            optimizer, stepped after every epoch (``"epoch"``) or after every
            optimizer step (``"step"``: the schedule is evaluated for the whole
            epoch before it starts and applied inside the Rust loop, giving
            the weights of the same schedule stepped by hand).
            ``ReduceLROnPlateau`` is stepped per epoch with ``val_loss`` (or
            ``loss`` without validation data).
        class_weight, sample_weight:
            As in Keras: a weight per class (a mapping from class index to
            weight, classes not named weighing 1, or a sequence of one per
            class) and/or a weight per training sample, multiplying each
            sample's loss term (the mean divides by the batch size as without
            weights); classes come from the labels (or the argmax of
            probability targets, or 0/1 for a single binary output). They
            apply to training only; validation losses are unweighted.
        clip_grad_norm:
            Clip the gradients' total L2 norm (over all parameters) to this
            value before every update, as ``torch.nn.utils.clip_grad_norm_``
            does; in the Rust step. A non-finite gradient norm stops training
            with :class:`~ferrograd.NonFiniteError`.
        diagnostics:
            Record per-epoch diagnostics in ``history.diagnostics``, computed
            in Rust at every step (see :mod:`ferrograd.diagnostics`): per
            parameter the gradient's and the weights' L2 norms and the
            update-to-weight ratio, per activation layer the fraction of dead
            ReLU units or saturated sigmoid/tanh outputs; each the mean over
            the epoch's steps.
        distributed:
            Data-parallel training over MPI (see :mod:`ferrograd.distributed`;
            launch with ``mpiexec -n N python -m mpi4py script.py``). ``True``
            (``"split"``): every rank passes the same data, ``batch_size`` is
            the global batch, split across ranks; the weights equal a
            single-process run's to rounding. ``"shard"``: each rank passes
            its own part of the data, ``batch_size`` is the per-rank batch,
            every rank runs the smallest part's step count each epoch, and
            validation metrics are those of the union of the ranks'
            ``validation_data``. Rank 0's weights and random state are
            broadcast first; settings that differ across ranks raise
            ``ValueError`` ("mismatch"); logs are reduced across ranks; the
            progress display, ``CSVLogger`` and saving write on rank 0 only.
        loss_weights:
            A graph :class:`Model` with several outputs: each output's loss
            weight (a list in output order, or a dict by output name); the
            loss minimised is the weighted sum (Keras's ``loss_weights``).

        The epochs run in Rust with the GIL released; Ctrl-C stops within a
        fraction of a second with ``KeyboardInterrupt``, leaving the model
        usable (its weights as of the last completed step). Everything is
        checked before the first step, so a bad argument leaves the model,
        the optimizer and the scheduler as they were.
        """
        setup = self._fit_setup(
            loss, optimizer, epochs, initial_epoch, batch_size, shuffle, verbose, stream,
            callbacks, scheduler, scheduler_interval, validation_split, validation_data, metrics,
            clip_grad_norm, diagnostics, loss_weights,
        )  # fmt: skip
        data = self._fit_data(
            setup, X, y, validation_data, validation_split, class_weight, sample_weight
        )
        if distributed is not False:
            if not isinstance(self, Sequential):
                raise ValueError("distributed training supports Sequential models only")
            from .distributed import _FitPlan

            setup.plan = _FitPlan(self, distributed, _length(data.x), setup.batch_size,
                                  epochs=setup.epochs, initial_epoch=setup.initial_epoch,
                                  shuffle=setup.shuffle, loss=setup.spec,
                                  optimizer=type(setup.opt).__name__, clip_grad_norm=setup.clip,
                                  validation=data.val is not None,
                                  scheduler_interval=scheduler_interval)  # fmt: skip
            if setup.plan.rank != 0:
                setup.verbose = 0
        return self._fit_loop(setup, data)

    def _fit_setup(
        self,
        loss: Any,
        optimizer: Any,
        epochs: Any,
        initial_epoch: Any,
        batch_size: Any,
        shuffle: Any,
        verbose: Any,
        stream: IO[str] | None,
        callbacks: Sequence[Any] | None,
        scheduler: Any,
        scheduler_interval: Any,
        validation_split: Any,
        validation_data: Any,
        metrics: Any,
        clip_grad_norm: Any,
        diagnostics: Any,
        loss_weights: Any = None,
    ) -> _FitSetup:
        """Checks ``fit``'s arguments other than the data, in their order."""
        loss_fn, spec = self._loss(loss)
        opt = _optim.get(optimizer, self.parameters())
        if opt._mcore is not self._core:
            raise ValueError("the optimizer was built from another model's parameters")
        epochs = _int_arg("epochs", epochs, 0)
        initial_epoch = _int_arg("initial_epoch", initial_epoch, 0)
        batch_size = _int_arg("batch_size", batch_size, 1)
        verbose = _int_arg("verbose", verbose, 0)
        cbs = list(callbacks) if callbacks is not None else []
        for i, cb in enumerate(cbs):
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"callbacks[{i}] is a {type(cb).__name__}, expected a ferrograd.callbacks.Callback"
                )
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f'scheduler_interval must be "epoch" or "step", got {scheduler_interval!r}'
            )
        plateau = isinstance(scheduler, ReduceLROnPlateau)
        if scheduler is not None:
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(
                    f"scheduler is a {type(scheduler).__name__}, expected a "
                    "ferrograd.optim.lr_scheduler scheduler"
                )
            if scheduler.optimizer is not opt:
                raise ValueError(
                    "the scheduler was built on another optimizer than the one given to fit"
                )
            if scheduler_interval == "step" and plateau:
                raise ValueError(
                    "ReduceLROnPlateau is stepped once per epoch with a metric: "
                    'use scheduler_interval="epoch"'
                )
        _check_split(validation_split, validation_data is not None)
        metric_names = self._metrics_for(loss_fn, metrics)
        clip = None
        if clip_grad_norm is not None:
            if isinstance(clip_grad_norm, bool) or not isinstance(
                clip_grad_norm, (int, float, np.integer, np.floating)
            ):
                raise TypeError(
                    f"clip_grad_norm must be a number, got {type(clip_grad_norm).__name__}"
                )
            clip = (float(clip_grad_norm), 2.0)
            _core.check_clip(*clip)
        if not isinstance(diagnostics, (bool, np.bool_)):
            raise TypeError(f"diagnostics must be a bool, got {type(diagnostics).__name__}")
        weights = self._loss_weights(loss_weights)
        return _FitSetup(
            loss=loss_fn,
            spec=spec,
            loss_weights=weights,
            opt=opt,
            epochs=epochs,
            initial_epoch=initial_epoch,
            batch_size=batch_size,
            shuffle=bool(shuffle),
            verbose=verbose,
            stream=stream,
            callbacks=cbs,
            scheduler=scheduler,
            per_step=scheduler is not None and scheduler_interval == "step",
            plateau=plateau,
            metrics=metric_names,
            clip=clip,
            diagnostics=bool(diagnostics),
        )

    def _fit_data(
        self,
        setup: _FitSetup,
        X: Any,
        y: Any,
        validation_data: Any,
        validation_split: Any,
        class_weight: Any,
        sample_weight: Any,
    ) -> _FitData:
        """Converts and checks the training and validation data (and the
        sample weights) against the model and the loss."""
        split = float(validation_split)
        xa, ya = self._prepare(X, y, setup.loss, "X")
        if _length(xa) != _length(ya):
            raise _core.ShapeError(
                f"X and y have different lengths: {_length(xa)} samples but {_length(ya)} targets"
            )
        sw = self._sample_weights(xa, ya, class_weight, sample_weight)
        val = None
        if split:
            n = _length(xa)
            cut = int(n * (1.0 - split))
            if cut < 1 or cut >= n:
                raise ValueError(
                    f"validation_split={split} leaves "
                    f"{cut} training and {n - cut} validation samples; both need >= 1"
                )
            val = (_rows(xa, slice(cut, None)), _rows(ya, slice(cut, None)))
            xa, ya = _rows(xa, slice(None, cut)), _rows(ya, slice(None, cut))
            if sw is not None:
                sw = np.ascontiguousarray(sw[:cut])
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (X_val, y_val)")
            val = self._prepare(validation_data[0], validation_data[1], setup.loss, "validation X")
        # Everything is checked before the first step, so a bad call changes nothing.
        self._core.validate(xa, ya, setup.spec, sw, loss_weights=setup.loss_weights)
        if val is not None:
            try:
                self._core.validate(val[0], val[1], setup.spec, loss_weights=setup.loss_weights)
            except ValueError as exc:
                raise type(exc)(f"validation data: {exc}") from None
        self._seen(xa)
        return _FitData(x=xa, y=ya, weights=sw, val=val)

    def _fit_loop(self, setup: _FitSetup, data: _FitData) -> History:
        """The epochs, with the callbacks, the scheduler and the History."""
        s, cbs, opt = setup, setup.callbacks, setup.opt
        steps = -(-_length(data.x) // s.batch_size) if s.plan is None else s.plan.steps
        keys = ["loss", *s.metrics]
        for name, acc in self._per_output(s.loss):
            keys += [f"{name}_loss", f"{name}_accuracy"] if acc else [f"{name}_loss"]
        if data.val is not None:
            keys += [f"val_{k}" for k in keys]
        if s.scheduler is not None:
            keys.append("learning_rate")
        for cb in cbs:
            cb._check_keys(keys)
        if s.per_step:
            check = getattr(s.scheduler, "_check_steps", None)
            if check is not None:
                check(max(s.epochs - s.initial_epoch, 0) * steps)

        history = History()
        history.params = {"epochs": s.epochs, "steps": steps, "verbose": s.verbose}
        self.history, self.optimizer, self.stop_training = history, opt, False
        self.scheduler = s.scheduler
        for cb in cbs:
            cb.set_model(self)
            cb.set_params(dict(history.params))
        batch_cbs = [cb for cb in cbs if cb._wants_batches()]
        for cb in cbs:
            cb.on_train_begin({})
        logs: dict[str, float] = {}
        for epoch in range(s.initial_epoch, s.epochs):
            for cb in cbs:
                cb.on_epoch_begin(epoch, {})
            if self.stop_training:  # set by on_epoch_begin: train no more
                break
            progress = EpochProgress(epoch + 1, s.epochs, s.verbose, s.stream)
            logs = self._fit_epoch(s, data, epoch, steps, progress, batch_cbs)
            self.epochs_trained += 1
            if s.scheduler is not None and not s.per_step:
                if s.plateau:
                    s.scheduler.step(logs.get("val_loss", logs["loss"]))
                else:
                    s.scheduler.step()
            if s.diagnostics:
                history._append_diagnostics(self._core.last_diagnostics())
            # As in Keras: the callbacks first (they may add to the logs),
            # then the History and the progress line.
            for cb in cbs:
                cb.on_epoch_end(epoch, logs)
            history._append(epoch, logs)
            progress.finish(_length(data.x), logs)
            if self.stop_training:
                break
        for cb in cbs:
            cb.on_train_end(logs)
        return history

    def _fit_epoch(
        self,
        s: _FitSetup,
        data: _FitData,
        epoch: int,
        steps: int,
        progress: EpochProgress,
        batch_cbs: list[Any],
    ) -> dict[str, float]:
        """One epoch in the Rust engine, then the validation pass: the logs."""
        opt, scheduler = s.opt, s.scheduler
        lrs = momenta = snap = None
        if s.per_step:
            snap = scheduler._snapshot()
            lrs, momenta = scheduler._per_step_values(steps)
        epoch_lr = opt.lr if lrs is None else lrs[0]
        report = self._reporter(progress, batch_cbs, s.metrics)
        steps_before = opt.steps
        try:
            train_loss, train_acc, totals, outputs = self._core.train_epoch(
                data.x,
                data.y,
                s.spec,
                opt._core,
                batch_size=s.batch_size,
                shuffle=s.shuffle,
                epoch=epoch + 1,
                check=False,  # _fit_data validated the data
                callback=report,
                lrs=lrs,
                momenta=momenta,
                every_step=bool(batch_cbs),
                sample_weight=data.weights,
                clip=s.clip,
                diagnostics=s.diagnostics,
                loss_weights=s.loss_weights,
                **(s.plan.epoch_kwargs() if s.plan is not None else {}),
            )
        except BaseException:
            progress.abort()
            raise
        finally:
            # The schedule was advanced for the whole epoch; an epoch
            # that ended early (a callback, Ctrl-C, an error) took fewer.
            taken = opt.steps - steps_before
            if lrs is not None and taken < len(lrs):
                assert scheduler is not None and snap is not None
                scheduler._rewind(snap, taken)
        if s.plan is not None:
            train_loss, train_acc = s.plan.train_logs(totals)
        logs = {"loss": train_loss}
        if "accuracy" in s.metrics and train_acc is not None:
            logs["accuracy"] = train_acc
        logs.update(self._output_logs(s.loss, outputs, ""))
        if data.val is not None:
            if s.plan is None:
                vl, va, val_outputs = self._core.evaluate(
                    data.val[0],
                    data.val[1],
                    s.spec,
                    DEFAULT_EVAL_BATCH,
                    loss_weights=s.loss_weights,
                )
            else:
                vl, va = s.plan.validate(self, *data.val, s.spec, DEFAULT_EVAL_BATCH)
                val_outputs = []
            logs["val_loss"] = vl
            if "accuracy" in s.metrics and va is not None:
                logs["val_accuracy"] = va
            logs.update(self._output_logs(s.loss, val_outputs, "val_"))
        if scheduler is not None:
            logs["learning_rate"] = epoch_lr
        return logs

    def _sample_weights(
        self, xa: Any, ya: Any, class_weight: Any, sample_weight: Any
    ) -> np.ndarray | None:
        """Keras's sample_weight times class_weight (by each sample's class),
        as one weight per sample in the model's dtype, or None."""
        weights = None
        if sample_weight is not None:
            arr = np.asarray(sample_weight)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"sample_weight must hold numbers, got dtype {arr.dtype}")
            weights = arr.astype(np.float64)
        if class_weight is not None:
            out = self._output_shape(xa)
            if ya.ndim == 1 and ya.dtype == np.int64:
                classes, index = int(np.prod(out)), ya
            elif ya.ndim == 2 and ya.shape[1] > 1:
                classes, index = ya.shape[1], ya.argmax(axis=1)
            elif ya.size == len(ya):
                classes, index = 2, (ya.reshape(len(ya)) > 0.5).astype(np.int64)
            else:
                raise ValueError(
                    "class_weight needs class labels, one-hot or probability targets (N, C), "
                    f"or one binary output; got targets of shape {ya.shape}"
                )
            if isinstance(class_weight, Mapping):
                keys = []
                for k in class_weight:
                    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
                        raise TypeError(
                            f"class_weight keys must be class indices (ints), got {k!r}"
                        )
                    keys.append(int(k))
                values = [float(class_weight[k]) for k in class_weight]
                full = self._core_class_weights(keys, values, classes)
            else:
                arr = np.asarray(class_weight)
                if arr.ndim != 1 or arr.dtype.kind not in "biuf":
                    raise TypeError(
                        "class_weight must be a mapping {class: weight} or a 1-d sequence"
                    )
                full = self._core_class_weights(None, [float(v) for v in arr], classes)
            by_class = np.asarray(full)[index]
            weights = by_class if weights is None else weights * by_class
        if weights is None:
            return None
        return np.require(weights.astype(self.dtype), requirements=["C", "A"])

    @staticmethod
    def _core_class_weights(
        keys: list[int] | None, values: list[float], classes: int
    ) -> list[float]:
        return _core.class_weights(keys, values, classes)

    def _reporter(
        self, progress: EpochProgress, batch_cbs: list[Any], metric_names: tuple[str, ...]
    ) -> Callable[[int, int, int, float, float | None], bool] | None:
        """The engine's progress callback: the live bar, and per-batch
        callbacks (it returns ``True`` when one of them asks to stop)."""
        if not batch_cbs and not progress.live:
            return None

        def report(step: int, steps: int, samples: int, loss: float, acc: float | None) -> bool:
            progress.update(step, steps, samples, loss, acc)
            logs = {"loss": loss}
            if acc is not None and "accuracy" in metric_names:
                logs["accuracy"] = acc
            for cb in batch_cbs:
                cb.on_train_batch_end(step - 1, logs)
            return bool(self.stop_training)

        return report

    def evaluate(
        self,
        X: Any,
        y: Any,
        loss: str | losses.Loss,
        metrics: Sequence[str] | None = None,
        batch_size: int = DEFAULT_EVAL_BATCH,
        distributed: bool = False,
        loss_weights: Any = None,
    ) -> dict[str, float]:
        """Mean loss (and metrics) over a dataset in inference mode:
        ``{"loss": ..., "accuracy": ...}``. With ``distributed=True`` every
        rank passes the same data, evaluates its part, and gets the whole
        result (see :mod:`ferrograd.distributed`). ``loss_weights``: as
        in :meth:`fit`."""
        loss_fn, spec = self._loss(loss)
        metric_names = self._metrics_for(loss_fn, metrics)
        batch_size = _int_arg("batch_size", batch_size, 1)
        weights = self._loss_weights(loss_weights)
        xa, ya = self._prepare(X, y, loss_fn, "X")
        acc: float | None
        if distributed:
            if not isinstance(self, Sequential):
                raise ValueError("distributed evaluation supports Sequential models only")
            from .distributed import _evaluate

            value, acc = _evaluate(self, xa, ya, spec, batch_size)
            outputs: list[tuple[float, float | None]] = []
        else:
            value, acc, outputs = self._core.evaluate(
                xa, ya, spec, batch_size, loss_weights=weights
            )
        self._seen(xa)
        out = {"loss": value}
        if "accuracy" in metric_names and acc is not None:
            out["accuracy"] = acc
        out.update(self._output_logs(loss_fn, outputs, ""))
        return out

    def _layer_calls(self) -> list[tuple[str, str]]:
        """``(name, type)`` of each layer call in the engine's order: the
        ``state_dict`` prefix of its parameters and the layer's class."""
        return [(str(i), type(layer).__name__) for i, layer in enumerate(self.layers)]

    def _per_output(self, loss: Any) -> list[tuple[str, bool]]:
        """``(name, with accuracy)`` of each output whose own loss the logs
        report (as Keras: ``{name}_loss``, ``{name}_accuracy``): none for a
        model with one output, whose ``loss`` is that output's."""
        return []

    def _output_logs(
        self, loss: Any, outputs: list[tuple[float, float | None]], prefix: str
    ) -> dict[str, float]:
        """The per-output entries of the logs from the engine's per-output
        ``(loss, accuracy or None)``."""
        logs: dict[str, float] = {}
        for (name, with_acc), (value, acc) in zip(self._per_output(loss), outputs):
            logs[f"{prefix}{name}_loss"] = value
            if with_acc and acc is not None:
                logs[f"{prefix}{name}_accuracy"] = acc
        return logs

    def _predict(self, X: Any, batch_size: Any, distributed: bool) -> Any:
        """``predict``: the engine's output, one array or (several outputs) a list."""
        batch_size = _int_arg("batch_size", batch_size, 1)
        xa = self._features(X, "X")
        if distributed:
            if not isinstance(self, Sequential):
                raise ValueError("distributed prediction supports Sequential models only")
            from .distributed import _predict

            out: Any = _predict(self, xa, batch_size)
        else:
            out = self._core.predict(xa, batch_size)
        self._seen(xa)
        return out


class Sequential(BaseModel):
    """A stack of layers trained by backpropagation in Rust.

    Parameters
    ----------
    layers:
        A list of :mod:`ferrograd.layers` (or the layers as positional arguments).
    seed:
        Fixes the initial weights, the shuffling and the dropout masks. With
        the same seed, data and thread count, training gives identical
        weights. ``None`` draws a random seed (kept in :attr:`seed`).
    dtype:
        ``"float32"`` (default) or ``"float64"``.

    ``state_dict()`` keys and shapes are those of ``torch.nn.Sequential``
    (``"0.weight"`` of shape ``(out, in)``, ``"0.bias"``), so weights move
    between the two without conversion.
    """

    #: The model's name, under which its layers appear when it is called on
    #: nodes of a graph model as a block (``fg.Sequential([...],
    #: name="layer1")`` gives ``layer1.0.weight``). Default ``sequential``,
    #: ``sequential_1``, ...
    name = "sequential"

    def __init__(
        self,
        layers: Sequence[Layer] | Layer,
        *more: Layer,
        seed: int | None = None,
        dtype: Any = "float32",
        name: str | None = None,
    ) -> None:
        self._setup(layers, more, seed, dtype, init=True)
        self.name = (
            _graph.default_name("sequential")
            if name is None
            else _graph.check_name(name, "Sequential")
        )

    def _call_block(self, node: Any) -> _graph.Node:
        """``model(node)``: the stack as a block of a graph model: its layers
        are applied in order and appear in the new model as
        ``"{name}.{index}"`` (``state_dict`` keys ``"layer1.0.weight"``, as
        torch's nested modules), starting from this model's current weights."""
        if not isinstance(node, _graph.Node):
            raise TypeError(f'Sequential "{self.name}" takes one node, got {type(node).__name__}')
        for i, layer in enumerate(self.layers):
            node = layer(node)
            node.name = f"{self.name}.{i}"
            node.origin = (self, str(i))
        return node

    @classmethod
    def _uninitialised(cls, layers: Sequence[Layer], seed: int, dtype: Any) -> Sequential:
        """A model whose parameters are zero, for loading weights into (the
        weight initialisation of a large model costs more than its load)."""
        model = cls.__new__(cls)
        model._setup(layers, (), seed, dtype, init=False)
        return model

    def _setup(
        self,
        layers: Sequence[Layer] | Layer,
        more: Sequence[Layer],
        seed: Any,
        dtype: Any,
        init: bool,
    ) -> None:
        layer_list = [layers, *more] if isinstance(layers, Layer) else list(layers) + list(more)
        for i, layer in enumerate(layer_list):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"layer {i} is a {type(layer).__name__}, expected a ferrograd.layers.Layer"
                )
        if not layer_list:
            raise ValueError("Sequential needs at least one layer")
        if seed is None:
            seed = secrets.randbits(63)
        seed = _int_arg("seed", seed, 0)
        if seed >= 2**64:
            raise ValueError(f"seed must be < 2**64, got {seed}")
        self.layers: list[Layer] = layer_list
        dt = _DTYPES[_dtype_name(dtype)]
        core = _core.Model([ly._spec() for ly in layer_list], dt.name, seed, init)
        self._init_core(core, seed, dt)

    def predict(
        self, X: Any, batch_size: int = DEFAULT_EVAL_BATCH, distributed: bool = False
    ) -> np.ndarray:
        """The model's output for ``X`` in inference mode, computed in batches.
        With ``distributed=True`` every rank passes the same ``X``, computes
        its part, and gets the whole output (see :mod:`ferrograd.distributed`)."""
        # A Sequential has one output: one array, never a list.
        return cast(np.ndarray, self._predict(X, batch_size, distributed))

    # ------------------------------------------------------------ display

    def _shapes(self, input_shape: Sequence[int] | None) -> list[tuple[int, ...]] | None:
        shape = input_shape if input_shape is not None else self._input_shape
        if shape is None:
            first = self.layers[0]
            if isinstance(first, Dense):
                shape = (first.in_features,)
            else:
                return None
        return [tuple(s) for s in self._core.layer_shapes(list(shape))]

    def summary(
        self,
        input_shape: Sequence[int] | None = None,
        print_fn: Callable[[str], Any] | None = print,
    ) -> str:
        """A table of layers, output shapes and parameter counts; printed
        with ``print_fn`` (pass ``None`` to only return it).

        ``input_shape`` is per sample, e.g. ``(28, 28)``; by default the
        last shape seen, or the first Dense layer's ``in_features``.
        """
        shapes = self._shapes(input_shape)
        rows = [("#", "Layer", "Output shape", "Params")]
        for i, layer in enumerate(self.layers):
            shp = "(N, " + ", ".join(map(str, shapes[i])) + ")" if shapes else "?"
            rows.append((str(i), repr(layer), shp, f"{layer.num_params():,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = "-" * (sum(widths) + 6)
        out = [f"Sequential ({self.dtype.name}, seed={self.seed})", line]
        for j, r in enumerate(rows):
            out.append(
                f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}"
            )
            if j == 0:
                out.append(line)
        out += [line, f"Total params: {self.num_params():,}"]
        text = "\n".join(out)
        if print_fn is not None:
            print_fn(text)
        return text

    def __repr__(self) -> str:
        shapes = self._shapes(None)
        lines = [f"Sequential(dtype={self.dtype.name}, params={self.num_params():,})"]
        for i, layer in enumerate(self.layers):
            shp = f"  -> (N, {', '.join(map(str, shapes[i]))})" if shapes else ""
            n = layer.num_params()
            lines.append(f"  ({i}) {layer!r}{shp}" + (f"  [{n:,} params]" if n else ""))
        return "\n".join(lines)


def _unpickle_model(blob: bytes) -> BaseModel:
    model: BaseModel = _checkpoints().loads(blob)
    return model


def gradcheck(
    model: BaseModel,
    loss: Any,
    X: Any,
    y: Any,
    eps: float = 1e-6,
    loss_weights: Any = None,
) -> dict[str, float]:
    """Checks backpropagation against central finite differences.

    Returns, per parameter name, the worst relative error
    ``|analytic - numeric| / max(|analytic|, |numeric|, f)`` over its
    elements, where ``f`` is 1e-3 times that parameter's largest gradient
    element (at least 1e-7): elements far below the gradient's scale are
    judged against that scale, since their finite differences are rounding
    noise. Below 1e-6 is a pass for float64. Needs a float64 model:
    float32 differences are too coarse and raise ``ValueError``. The model is
    left unchanged; dropout masks are held fixed during the check. Cost: two
    forward passes per parameter element, so use a small model and batch.
    A graph :class:`~ferrograd.Model` takes its inputs, targets, losses
    and ``loss_weights`` as in its ``fit``.
    """
    if not isinstance(model, BaseModel):
        raise TypeError(
            f"model must be a ferrograd.Sequential or Model, got {type(model).__name__}"
        )
    loss_fn, spec = model._loss(loss)
    weights = model._loss_weights(loss_weights)
    xa, ya = model._prepare(X, y, loss_fn, "X")
    report = model._core.gradcheck(xa, ya, spec, float(eps), loss_weights=weights)
    return {name: rel for name, rel, _abs in report}


def clip_grad_norm_(
    parameters: Parameter | Iterable[Parameter],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    """Clips gradients in place to a total norm of at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_``; returns the total norm before
    clipping.

    The total norm is the ``norm_type``-norm of the per-parameter gradient
    norms (``float("inf")`` for the largest magnitude); when it exceeds
    ``max_norm`` every gradient is multiplied by
    ``max_norm / (total + 1e-6)``. For custom loops, between
    :meth:`Sequential.backward` and ``optimizer.step()``; ``fit`` takes
    ``clip_grad_norm=`` and clips in the Rust step. With a NaN or infinite
    total, the gradients are scaled by NaN or 0 as torch does, unless
    ``error_if_nonfinite`` raises :class:`~ferrograd.NonFiniteError` first.
    """
    params = [parameters] if isinstance(parameters, Parameter) else list(parameters)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(
                f"parameters[{i}] is a {type(p).__name__}, expected a ferrograd Parameter"
            )
    for name, v in (("max_norm", max_norm), ("norm_type", norm_type)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    max_norm, norm_type = float(max_norm), float(norm_type)
    _core.check_clip(max_norm, norm_type)
    groups: dict[int, tuple[Any, list[int]]] = {}
    for p in params:
        groups.setdefault(id(p._core), (p._core, []))[1].append(p._index)
    norms: list[float] = []
    for core, idx in groups.values():
        norms += core.grad_norms(idx, norm_type)
    total, coef = _core.clip_coef(norms, max_norm, norm_type)
    if error_if_nonfinite and not np.isfinite(total):
        raise _core.NonFiniteError(
            f"the total norm of order {norm_type} of the gradients is {total}; "
            "pass error_if_nonfinite=False to clip anyway"
        )
    if coef < 1.0 or np.isnan(coef):
        for core, idx in groups.values():
            core.scale_grads(idx, coef)
    return float(total)
