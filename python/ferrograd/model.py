"""``Sequential``: the model, its parameters, training, evaluation and
inference. All computation happens in the Rust engine; this module checks
arguments, converts data and reports progress."""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, Callable

import numpy as np

from . import _core, losses
from . import optim as _optim
from ._data import as_features, as_target
from ._progress import EpochProgress
from .layers import Layer

__all__ = ["Sequential", "Parameter", "History", "gradcheck"]

_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
_METRICS = ("accuracy",)
DEFAULT_EVAL_BATCH = 1024


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


class Parameter:
    """A view of one model parameter, named as in ``torch.nn``'s ``state_dict``.

    ``value`` and ``grad`` return numpy copies in ``state_dict`` layout
    (e.g. ``(out_features, in_features)`` for a weight); assigning ``value``
    writes into the model.
    """

    def __init__(self, model: Sequential, index: int, name: str, shape: tuple[int, ...]):
        self._model = model
        self._index = index
        self.name = name
        self.shape = shape

    @property
    def value(self) -> np.ndarray:
        """A copy of the parameter's values."""
        return self._model._core.get_param(self._index)

    @value.setter
    def value(self, new: Any) -> None:
        self._model.load_state_dict({**self._model.state_dict(), self.name: new})

    @property
    def grad(self) -> np.ndarray:
        """A copy of the accumulated gradient (zero until a backward pass)."""
        return self._model._core.get_grad(self._index)

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape))

    def __repr__(self) -> str:
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self._model.dtype})"


class History:
    """What :meth:`Sequential.fit` returns: per-epoch metrics, Keras style.

    ``history`` maps ``"loss"``, ``"accuracy"``, ``"val_loss"``, ... to lists
    with one value per epoch; ``epoch`` lists the epoch numbers.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def _append(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in metrics.items():
            self.history.setdefault(k, []).append(float(v))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


class Sequential:
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

    def __init__(
        self,
        layers: Sequence[Layer] | Layer,
        *more: Layer,
        seed: int | None = None,
        dtype: Any = "float32",
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
        self.seed = seed
        self.dtype: np.dtype[Any] = _DTYPES[_dtype_name(dtype)]
        self._core = _core.Model([ly._spec() for ly in layer_list], self.dtype.name, seed)
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

    # ------------------------------------------------------------ mode

    def train(self, mode: bool = True) -> Sequential:
        """Sets the default mode of :meth:`forward` / ``model(x)`` to training
        (dropout active, BatchNorm on batch statistics, updating its running
        statistics), or to evaluation with ``mode=False``; returns the model.
        An explicit ``forward(x, training=...)`` still wins. :meth:`fit`
        always trains in training mode and evaluates in evaluation mode, and
        :meth:`predict` / :meth:`evaluate` never change any state."""
        self.training = bool(mode)
        return self

    def eval(self) -> Sequential:
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
            if hasattr(v, "detach") and hasattr(v, "cpu"):  # torch tensors
                v = v.detach().cpu().numpy()
            arr = np.asarray(v)
            if arr.dtype.kind not in "biuf":
                raise TypeError(
                    f"state_dict entry {name!r} has dtype {arr.dtype}, expected numbers"
                )
            if kinds.get(name) == "count":
                if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
                    raise TypeError(f'state_dict entry "{name}" must hold integers (a count)')
                dtype: np.dtype[Any] = np.dtype(np.int64)
            else:
                dtype = self.dtype
            items.append((name, np.require(arr, dtype=dtype, requirements=["C", "A"])))
        self._core.load_state(items)

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
        xa = as_features(x, self.dtype, "x")
        out = self._core.forward(xa, bool(training))
        self._input_shape = tuple(xa.shape[1:])
        return out

    __call__ = forward

    def backward(self, grad: Any) -> None:
        """Backpropagates ``grad`` (dloss/doutput of the last training-mode
        :meth:`forward`), adding into every parameter's gradient."""
        g = np.ascontiguousarray(np.asarray(grad), dtype=self.dtype)
        self._core.backward(g)

    # ------------------------------------------------------------ training

    def _metrics_for(self, loss: losses.Loss, metrics: Any) -> tuple[str, ...]:
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

    def _prepare(self, x: Any, y: Any, loss: losses.Loss, what: str) -> tuple[np.ndarray, Any]:
        xa = as_features(x, self.dtype, what)
        ya = as_target(y, loss.name, self.dtype, len(xa))
        if ya.ndim == 1 and loss.name != "cross_entropy":
            out = self._core.layer_shapes(list(xa.shape[1:]))[-1]
            if list(out) == [1]:
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
            0 silent, 1 progress bar on a terminal (a line per epoch
            otherwise), 2 a line per epoch.

        The epochs run in Rust with the GIL released; Ctrl-C stops within a
        fraction of a second with ``KeyboardInterrupt``, leaving the model
        usable (its weights as of the last completed step).
        """
        loss_fn = losses.get(loss)
        opt = _optim.get(optimizer, self.parameters())
        if opt._model is not self:
            raise ValueError("the optimizer was built from another model's parameters")
        epochs = _int_arg("epochs", epochs, 0)
        batch_size = _int_arg("batch_size", batch_size, 1)
        verbose = _int_arg("verbose", verbose, 0)
        try:
            validation_split = float(validation_split)
        except (TypeError, ValueError):
            raise TypeError(
                f"validation_split must be a number, got {validation_split!r}"
            ) from None
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        if validation_split and validation_data is not None:
            raise ValueError("pass validation_data or validation_split, not both")
        metric_names = self._metrics_for(loss_fn, metrics)

        xa, ya = self._prepare(X, y, loss_fn, "X")
        if len(xa) != len(ya):
            raise _core.ShapeError(
                f"X and y have different lengths: {len(xa)} samples but {len(ya)} targets"
            )
        val = None
        if validation_split:
            split = int(len(xa) * (1.0 - validation_split))
            if split < 1 or split >= len(xa):
                raise ValueError(
                    f"validation_split={validation_split} leaves "
                    f"{split} training and {len(xa) - split} validation samples; both need >= 1"
                )
            val = (xa[split:], ya[split:])
            xa, ya = xa[:split], ya[:split]
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (X_val, y_val)")
            val = self._prepare(validation_data[0], validation_data[1], loss_fn, "validation X")
        # Everything is checked before the first step, so a bad call changes nothing.
        self._core.validate(xa, ya, loss_fn.name)
        if val is not None:
            try:
                self._core.validate(val[0], val[1], loss_fn.name)
            except ValueError as exc:
                raise type(exc)(f"validation data: {exc}") from None
        self._input_shape = tuple(xa.shape[1:])

        history = History()
        for epoch in range(1, epochs + 1):
            progress = EpochProgress(epoch, epochs, verbose, stream)
            try:
                train_loss, train_acc = self._core.train_epoch(
                    xa,
                    ya,
                    loss_fn.name,
                    opt._core,
                    batch_size,
                    bool(shuffle),
                    epoch,
                    False,
                    progress.update if progress.live else None,
                )
            except BaseException:
                progress.abort()
                raise
            logs = {"loss": train_loss}
            if "accuracy" in metric_names and train_acc is not None:
                logs["accuracy"] = train_acc
            if val is not None:
                vl, va = self._core.evaluate(val[0], val[1], loss_fn.name, DEFAULT_EVAL_BATCH)
                logs["val_loss"] = vl
                if "accuracy" in metric_names and va is not None:
                    logs["val_accuracy"] = va
            history._append(epoch, logs)
            progress.finish(len(xa), logs)
        return history

    def evaluate(
        self,
        X: Any,
        y: Any,
        loss: str | losses.Loss,
        metrics: Sequence[str] | None = None,
        batch_size: int = DEFAULT_EVAL_BATCH,
    ) -> dict[str, float]:
        """Mean loss (and metrics) over a dataset in inference mode:
        ``{"loss": ..., "accuracy": ...}``."""
        loss_fn = losses.get(loss)
        metric_names = self._metrics_for(loss_fn, metrics)
        batch_size = _int_arg("batch_size", batch_size, 1)
        xa, ya = self._prepare(X, y, loss_fn, "X")
        value, acc = self._core.evaluate(xa, ya, loss_fn.name, batch_size)
        self._input_shape = tuple(xa.shape[1:])
        out = {"loss": value}
        if "accuracy" in metric_names and acc is not None:
            out["accuracy"] = acc
        return out

    def predict(self, X: Any, batch_size: int = DEFAULT_EVAL_BATCH) -> np.ndarray:
        """The model's output for ``X`` in inference mode, computed in batches."""
        batch_size = _int_arg("batch_size", batch_size, 1)
        xa = as_features(X, self.dtype, "X")
        out = self._core.predict(xa, batch_size)
        self._input_shape = tuple(xa.shape[1:])
        return out

    # ------------------------------------------------------------ display

    def _shapes(self, input_shape: Sequence[int] | None) -> list[tuple[int, ...]] | None:
        shape = input_shape if input_shape is not None else self._input_shape
        if shape is None:
            first = self.layers[0]
            from .layers import Dense

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


def gradcheck(
    model: Sequential, loss: str | losses.Loss, X: Any, y: Any, eps: float = 1e-6
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
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a ferrograd.Sequential, got {type(model).__name__}")
    loss_fn = losses.get(loss)
    xa, ya = model._prepare(X, y, loss_fn, "X")
    report = model._core.gradcheck(xa, ya, loss_fn.name, float(eps))
    return {name: rel for name, rel, _abs in report}
