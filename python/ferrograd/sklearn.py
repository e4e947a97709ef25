"""scikit-learn estimators backed by ferrograd: :class:`MLPClassifier` and
:class:`MLPRegressor`.

They take scikit-learn's own ``MLPClassifier`` / ``MLPRegressor`` parameter
names and defaults, so switching is one import::

    from ferrograd.sklearn import MLPClassifier   # was: from sklearn.neural_network import ...
    clf = MLPClassifier(hidden_layer_sizes=(256,), random_state=0).fit(X_train, y_train)
    clf.score(X_test, y_test)

and add ferrograd's own: ``dropout``, ``dtype`` and ``layers`` (a callable
building any stack of :mod:`ferrograd.layers`, CNNs included). Every epoch
runs in ferrograd's Rust engine (:meth:`ferrograd.Sequential.fit`); this
module only applies scikit-learn's conventions around it: input validation,
label encoding, the convergence rule (``tol``, ``n_iter_no_change``),
early stopping, ``warm_start`` and ``partial_fit``.

This is the only ferrograd module that imports scikit-learn (``pip install
'ferrograd[sklearn]'``); ``import ferrograd`` never does.

Differences from scikit-learn's estimators
------------------------------------------
- ``solver="lbfgs"`` is not supported (a ``ValueError`` at fit); ``max_fun``
  is accepted for compatibility and unused. Sparse input is not supported
  (densify it first).
- ``alpha`` becomes the optimizer's L2 weight decay ``alpha / b``, where
  ``b`` is the batch size times the mean sample weight: the gradient of
  scikit-learn's penalty ``0.5 * alpha * ||W||^2 / b`` per batch. Unlike
  scikit-learn it also applies to the biases (ferrograd's optimizers decay
  every parameter they update); the difference is negligible for the
  usual small ``alpha``. ``loss_curve_`` includes the penalty, as
  scikit-learn's does (computed from the weights at the end of each epoch).
- Sample weights are normalized to mean 1 over the training set, and each
  batch's loss is divided by the batch size; scikit-learn divides by the
  batch's summed weights. The two agree exactly for full-batch training and
  in expectation otherwise.
- ``partial_fit`` keeps the optimizer of its first call, and so the weight
  decay computed from that call's batch size and weights.
- Early stopping holds out a stratified split for multi-class targets too
  (scikit-learn stratifies binary ones only).
- Adam places ``epsilon`` as ``torch.optim.Adam`` does (inside the bias
  correction of the second moment); SGD's momentum is PyTorch's form, which
  equals scikit-learn's for a constant learning rate.
- Shuffling and dropout draw from ferrograd's generator, seeded from
  ``random_state``; the initial weights of the built-in network are drawn
  as scikit-learn draws them (Glorot uniform weights and biases from
  ``random_state``).
- ``MLPRegressor`` fitted on a 2-d ``y`` of one column predicts that shape
  (scikit-learn warns and flattens it).
- Computations run in ``dtype`` (float32 by default), not in the input's
  dtype; predictions and probabilities are returned as float64.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

try:
    from scipy.special import expit as _expit
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import (
        _check_sample_weight,
        check_is_fitted,
        column_or_1d,
        validate_data,
    )
except ImportError as exc:  # pragma: no cover - exercised without scikit-learn
    raise ImportError(
        "ferrograd.sklearn needs scikit-learn >= 1.6: pip install 'ferrograd[sklearn]'"
    ) from exc

from . import layers as L
from . import optim
from .model import Sequential

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS: dict[str, type[L.Layer] | None] = {
    "identity": None,
    "logistic": L.Sigmoid,
    "tanh": L.Tanh,
    "relu": L.ReLU,
}
_SOLVERS = ("adam", "sgd")
_LR_SCHEDULES = ("constant", "invscaling", "adaptive")
_DTYPES = ("float32", "float64")


# ---------------------------------------------------------------- checks


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_))


def _bad(owner: str, name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"The {name!r} parameter of {owner} must be {expected}; got {value!r}.")


def _real(
    owner: str, name: str, v: Any, lo: float, hi: float, lo_open: bool, hi_open: bool
) -> float:
    """``v`` as a float in the interval, else a ValueError naming the parameter."""
    ok = _is_real(v) and not np.isnan(v)
    if ok:
        f = float(v)
        ok = (f > lo if lo_open else f >= lo) and (f < hi if hi_open else f <= hi)
    if not ok:
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise _bad(owner, name, f"a float in the range {left}{lo}, {hi}{right}", v)
    return float(v)


def _int(owner: str, name: str, v: Any, lo: int) -> int:
    if not _is_int(v) or v < lo:
        raise _bad(owner, name, f"an int >= {lo}", v)
    return int(v)


def _hidden_sizes(owner: str, value: Any) -> list[int]:
    sizes = list(value) if isinstance(value, (Sequence, np.ndarray)) else [value]
    if isinstance(value, str) or not all(_is_int(s) for s in sizes):
        raise _bad(owner, "hidden_layer_sizes", "an int or a sequence of ints", value)
    if any(s <= 0 for s in sizes):
        raise ValueError(f"hidden_layer_sizes must be > 0, got {value}.")
    return [int(s) for s in sizes]


def _optimizer_state(opt: optim.Optimizer) -> dict[str, Any] | None:
    """The optimizer's ``state_dict()`` and weight decay, or None where this
    ferrograd build has no optimizer state to export."""
    export = getattr(opt, "state_dict", None)
    if export is None:
        return None
    try:
        sd = export()
    except (AttributeError, NotImplementedError):  # an engine without get_state
        return None
    return {"weight_decay": float(opt.defaults["weight_decay"]), "state_dict": sd}


# ---------------------------------------------------------------- base


class _BaseMLP(BaseEstimator):
    """What both estimators share; see :class:`MLPClassifier` for the parameters."""

    def __init__(
        self,
        hidden_layer_sizes: Any,
        activation: str,
        *,
        solver: str,
        alpha: float,
        batch_size: int | str,
        learning_rate: str,
        learning_rate_init: float,
        power_t: float,
        max_iter: int,
        shuffle: bool,
        random_state: Any,
        tol: float,
        verbose: bool | int,
        warm_start: bool,
        momentum: float,
        nesterovs_momentum: bool,
        early_stopping: bool,
        validation_fraction: float,
        beta_1: float,
        beta_2: float,
        epsilon: float,
        n_iter_no_change: int,
        max_fun: int,
        dropout: float,
        dtype: str,
        layers: Callable[[int, int], Sequence[L.Layer]] | None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dropout = dropout
        self.dtype = dtype
        self.layers = layers

    # ------------------------------------------------------------ hooks

    def _encode_targets(
        self, y: np.ndarray, first: bool, incremental: bool
    ) -> tuple[np.ndarray, str, int, float]:
        """``y`` as the engine's targets, the loss name, the number of
        outputs and the factor scaling the loss to scikit-learn's gradient."""
        raise NotImplementedError

    def _validation_score(self, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None) -> float:
        raise NotImplementedError

    def _loss_report_factor(self) -> float:
        """Engine loss (after the scaling) times this is scikit-learn's loss."""
        return 1.0

    # ------------------------------------------------------------ parameters

    def _check_params(self) -> list[int]:
        owner = type(self).__name__
        hidden = _hidden_sizes(owner, self.hidden_layer_sizes)
        if self.activation not in _ACTIVATIONS:
            raise _bad(owner, "activation", f"one of {sorted(_ACTIVATIONS)}", self.activation)
        if self.solver == "lbfgs":
            raise ValueError(
                f"solver='lbfgs' is not supported by ferrograd's {owner}; use solver='adam' "
                "(the default) or solver='sgd'"
            )
        if self.solver not in _SOLVERS:
            raise _bad(owner, "solver", "'adam' or 'sgd' ('lbfgs' is not supported)", self.solver)
        _real(owner, "alpha", self.alpha, 0.0, np.inf, False, True)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _int(owner, "batch_size", self.batch_size, 1)
        if self.learning_rate not in _LR_SCHEDULES:
            raise _bad(owner, "learning_rate", f"one of {list(_LR_SCHEDULES)}", self.learning_rate)
        _real(owner, "learning_rate_init", self.learning_rate_init, 0.0, np.inf, True, True)
        _real(owner, "power_t", self.power_t, 0.0, np.inf, False, True)
        _int(owner, "max_iter", self.max_iter, 1)
        if not _is_bool(self.shuffle):
            raise _bad(owner, "shuffle", "a bool", self.shuffle)
        _real(owner, "tol", self.tol, 0.0, np.inf, False, True)
        if not (_is_bool(self.verbose) or _is_int(self.verbose)):
            raise _bad(owner, "verbose", "a bool or an int", self.verbose)
        for name in ("warm_start", "nesterovs_momentum", "early_stopping"):
            if not _is_bool(getattr(self, name)):
                raise _bad(owner, name, "a bool", getattr(self, name))
        _real(owner, "momentum", self.momentum, 0.0, 1.0, False, False)
        _real(owner, "validation_fraction", self.validation_fraction, 0.0, 1.0, False, True)
        _real(owner, "beta_1", self.beta_1, 0.0, 1.0, False, True)
        _real(owner, "beta_2", self.beta_2, 0.0, 1.0, False, True)
        _real(owner, "epsilon", self.epsilon, 0.0, np.inf, True, True)
        _int(owner, "n_iter_no_change", self.n_iter_no_change, 1)
        _int(owner, "max_fun", self.max_fun, 1)
        _real(owner, "dropout", self.dropout, 0.0, 1.0, False, True)
        if self.dtype not in _DTYPES:
            raise _bad(owner, "dtype", "'float32' or 'float64'", self.dtype)
        if self.layers is not None and not callable(self.layers):
            raise _bad(owner, "layers", "None or a callable (n_features, n_outputs) -> layers", 0)
        return hidden

    # ------------------------------------------------------------ the network

    def _build(
        self, hidden: list[int], n_features: int, n_outputs: int, rs: np.random.RandomState
    ) -> Sequential:
        """A fresh network: the built-in MLP (initialized as scikit-learn's)
        or the ``layers`` callable's stack; ferrograd's seed is drawn from ``rs``."""
        if self.layers is not None:
            stack = list(self.layers(n_features, n_outputs))
            seed = int(rs.randint(np.iinfo(np.int32).max))
            return Sequential(stack, seed=seed, dtype=self.dtype)
        units = [n_features, *hidden, n_outputs]
        act = _ACTIVATIONS[self.activation]
        stack = []
        for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:])):
            stack.append(L.Dense(fan_in, fan_out, init="zeros"))
            if i < len(units) - 2:
                if act is not None:
                    stack.append(act())
                if self.dropout > 0:
                    stack.append(L.Dropout(float(self.dropout)))
        # scikit-learn's initialization: Glorot uniform weights and biases.
        factor = 2.0 if self.activation == "logistic" else 6.0
        init = []
        for fan_in, fan_out in zip(units[:-1], units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            init.append(rs.uniform(-bound, bound, (fan_in, fan_out)).T)
            init.append(rs.uniform(-bound, bound, fan_out))
        seed = int(rs.randint(np.iinfo(np.int32).max))
        model = Sequential(stack, seed=seed, dtype=self.dtype)
        model.load_state_dict(dict(zip(model.state_dict(), init)))
        return model

    def _make_optimizer(self, model: Sequential, weight_decay: float) -> optim.Optimizer:
        lr = float(self.learning_rate_init)
        if self.solver == "adam":
            return optim.Adam(
                model.parameters(),
                lr=lr,
                betas=(float(self.beta_1), float(self.beta_2)),
                eps=float(self.epsilon),
                weight_decay=weight_decay,
            )
        momentum = float(self.momentum)
        return optim.SGD(
            model.parameters(),
            lr=lr,
            momentum=momentum,
            nesterov=bool(self.nesterovs_momentum) and momentum > 0,
            weight_decay=weight_decay,
        )

    def _penalty(self, weight_decay: float) -> float:
        """``0.5 * weight_decay * ||params||^2``, the L2 term of the objective."""
        if weight_decay == 0.0:
            return 0.0
        total = 0.0
        for p in self.model_.parameters():
            v = p.value.astype(np.float64).ravel()
            total += float(np.dot(v, v))
        return 0.5 * weight_decay * total

    def _outputs(self, X: Any) -> np.ndarray:
        """The network's raw outputs (logits for classifiers) as float64."""
        check_is_fitted(self)
        X = validate_data(
            self,
            X,
            reset=False,
            dtype=(np.float64, np.float32),
            allow_nd=self.layers is not None,
        )
        return self.model_.predict(np.ascontiguousarray(X)).astype(np.float64)

    # ------------------------------------------------------------ training

    def _fit(self, X: Any, y: Any, sample_weight: Any, incremental: bool) -> _BaseMLP:
        hidden = self._check_params()
        owner = type(self).__name__
        fitted = hasattr(self, "model_")
        first = not fitted or (not self.warm_start and not incremental)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        X, y = validate_data(
            self,
            X,
            y,
            reset=first,
            dtype=(np.float64, np.float32),
            multi_output=True,
            allow_nd=self.layers is not None,
            y_numeric=not is_classifier(self),
        )
        X = np.ascontiguousarray(X)
        sw = None
        if sample_weight is not None:
            sw = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        targets, loss, n_outputs, scale = self._encode_targets(y, first, incremental)
        rs = check_random_state(self.random_state)

        if first:
            model = self._build(hidden, int(X.shape[1]), n_outputs, rs)
            if self.layers is not None:
                out = model.predict(X[:1])
                if out.shape[1:] != (n_outputs,):
                    raise ValueError(
                        f"the network from layers= outputs shape {out.shape[1:]} per sample, "
                        f"but {owner} needs ({n_outputs},) here"
                    )
            self.model_ = model
            self.n_outputs_ = n_outputs
            self.n_layers_ = len(hidden) + 2 if self.layers is None else len(model.layers) + 1
            self.n_iter_ = 0
            self.t_ = 0
            self.loss_curve_: list[float] = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_: list[float] | None = []
                self.best_validation_score_: float | None = -np.inf
                self.best_loss_: float | None = None
            else:
                self.validation_scores_ = None
                self.best_validation_score_ = None
                self.best_loss_ = np.inf
            self.__dict__.pop("_optimizer", None)
        elif self.n_outputs_ != n_outputs:
            raise ValueError(
                f"y has {n_outputs} outputs, but {owner} was fitted with {self.n_outputs_}"
            )
        model = self.model_

        # Early stopping: hold out validation_fraction of the data, as scikit-learn
        # (stratified for binary and multi-class targets).
        X_val = y_val = sw_val = None
        X_tr, t_tr, sw_tr = X, targets, sw
        self._best_state: dict[str, np.ndarray] | None = None
        if self.early_stopping:
            multilabel = is_classifier(self) and self.out_activation_ == "logistic"
            multilabel = multilabel and self.n_outputs_ > 1
            stratify = y if is_classifier(self) and not multilabel else None
            arrays = [X, targets, y] + ([sw] if sw is not None else [])
            split = train_test_split(
                *arrays,
                random_state=rs,
                test_size=float(self.validation_fraction),
                stratify=stratify,
            )
            X_tr, X_val, t_tr, _, _, y_val = split[:6]
            if sw is not None:
                sw_tr, sw_val = split[6], split[7]
            if len(X_val) < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
            X_tr = np.ascontiguousarray(X_tr)
        n_train = len(X_tr)

        if isinstance(self.batch_size, str):
            batch = min(200, n_train)
        else:
            if self.batch_size > n_train:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. It is going "
                    "to be clipped",
                    stacklevel=3,
                )
            batch = int(np.clip(self.batch_size, 1, n_train))

        # Weights of mean 1 times the loss scale; alpha as weight decay (module docs).
        mean_w = 1.0
        if sw_tr is not None:
            mean_w = float(np.mean(sw_tr))
            if not mean_w > 0:
                raise ValueError(
                    "Sample weights must contain at least one non-zero number in the "
                    "training set (after the validation split)."
                )
        weights = None
        if sw_tr is not None or scale != 1.0:
            base = np.ones(n_train) if sw_tr is None else np.asarray(sw_tr) / mean_w
            weights = np.ascontiguousarray(base * scale, dtype=model.dtype)
        weight_decay = float(self.alpha) / (batch * mean_w)

        opt = self.__dict__.get("_optimizer")
        if not incremental or opt is None:
            opt = self._make_optimizer(model, weight_decay)
            self._optimizer = opt
        else:
            # partial_fit keeps its optimizer (moments, step count) and the
            # weight decay it was built with on the first call.
            weight_decay = float(opt.defaults["weight_decay"])

        verbose = int(self.verbose)
        report = self._loss_report_factor()
        self.n_iter_ = 0
        try:
            for _ in range(int(self.max_iter)):
                hist = model.fit(
                    X_tr,
                    t_tr,
                    loss,
                    opt,
                    epochs=model.epochs_trained + 1,
                    initial_epoch=model.epochs_trained,
                    batch_size=batch,
                    shuffle=bool(self.shuffle),
                    metrics=(),
                    verbose=2 if verbose >= 2 else 0,
                    sample_weight=weights,
                )
                self.n_iter_ += 1
                self.loss_ = hist.history["loss"][-1] * report + self._penalty(weight_decay)
                self.t_ += n_train
                self.loss_curve_.append(self.loss_)
                if verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(X_val, y_val, sw_val)
                if self.solver == "sgd" and self.learning_rate == "invscaling":
                    opt.lr = float(self.learning_rate_init) / (self.t_ + 1) ** float(self.power_t)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    msg = (
                        f"{what} did not improve more than tol={self.tol:f} for "
                        f"{self.n_iter_no_change} consecutive epochs."
                    )
                    if self._trigger_stopping(opt, msg, verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                        "and the optimization hasn't converged yet.",
                        ConvergenceWarning,
                        stacklevel=3,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        if self.early_stopping and self._best_state is not None:
            model.load_state_dict(self._best_state)
            self._best_state = None
        return self

    def _trigger_stopping(self, opt: optim.Optimizer, msg: str, verbose: int) -> bool:
        """scikit-learn's rule: stop, or with SGD's adaptive schedule divide
        the learning rate by 5 and go on until it falls to 1e-6."""
        if self.solver != "sgd" or self.learning_rate != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if opt.lr <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        opt.lr = opt.lr / 5.0
        if verbose:
            print(msg + f" Setting learning rate to {opt.lr:f}")
        return False

    def _update_no_improvement_count(
        self, X_val: np.ndarray | None, y_val: np.ndarray | None, sw_val: np.ndarray | None
    ) -> None:
        if self.early_stopping:
            assert X_val is not None and y_val is not None and self.validation_scores_ is not None
            score = self._validation_score(X_val, y_val, sw_val)
            self.validation_scores_.append(score)
            if int(self.verbose):
                print(f"Validation score: {score:f}")
            best = self.best_validation_score_
            assert best is not None
            if score < best + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > best:
                self.best_validation_score_ = score
                self._best_state = self.model_.state_dict()
        else:
            best_loss = self.best_loss_
            assert best_loss is not None
            if self.loss_curve_[-1] > best_loss - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < best_loss:
                self.best_loss_ = self.loss_curve_[-1]

    # ------------------------------------------------------------ attributes

    def _dense_params(self, kind: str) -> list[np.ndarray]:
        check_is_fitted(self)
        out = []
        state = self.model_.state_dict()
        for i, layer in enumerate(self.model_.layers):
            if isinstance(layer, L.Dense):
                if kind == "weight":
                    out.append(state[f"{i}.weight"].T.copy())
                elif layer.bias:
                    out.append(state[f"{i}.bias"])
        return out

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices of the Dense layers, ``(n_in, n_out)`` as scikit-learn's (copies)."""
        return self._dense_params("weight")

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Bias vectors of the Dense layers (copies)."""
        return self._dense_params("bias")

    # ------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        """The estimator's state with the network as plain data (its layers,
        seed, dtype, ``state_dict`` and random generator state), so pickles
        do not depend on :class:`ferrograd.Sequential` pickling.

        The optimizer that ``partial_fit`` continues with is kept as its
        ``state_dict()`` where ferrograd's optimizers provide one (moments,
        momentum buffers, step count, learning rate); where they do not,
        it is left out and the next ``partial_fit`` after unpickling or a
        deepcopy starts a fresh optimizer (``fit`` always does, as
        scikit-learn's)."""
        state = dict(super().__getstate__())
        opt = state.pop("_optimizer", None)
        model = state.pop("model_", None)
        if model is not None:
            state["_fg_model"] = {
                "layers": list(model.layers),
                "seed": model.seed,
                "dtype": model.dtype.name,
                "state_dict": dict(model.state_dict()),
                "rng_state": list(model._core.get_rng_state()),
                "epochs_trained": model.epochs_trained,
            }
            if opt is not None:
                saved = _optimizer_state(opt)
                if saved is not None:
                    state["_fg_optimizer"] = saved
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        saved = state.pop("_fg_model", None)
        saved_opt = state.pop("_fg_optimizer", None)
        super().__setstate__(state)
        if saved is not None:
            model = Sequential(
                copy.deepcopy(saved["layers"]), seed=saved["seed"], dtype=saved["dtype"]
            )
            model.load_state_dict(saved["state_dict"])
            model._core.set_rng_state(list(saved["rng_state"]))
            model.epochs_trained = int(saved["epochs_trained"])
            self.model_ = model
            if saved_opt is not None:
                opt = self._make_optimizer(model, float(saved_opt["weight_decay"]))
                opt.load_state_dict(saved_opt["state_dict"])
                self._optimizer = opt

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        if self.layers is not None:
            tags.input_tags.three_d_array = True
        return tags


# ---------------------------------------------------------------- classifier

_PARAMS_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=(100,)
        The width of each hidden layer (ignored when ``layers`` is given).
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        The hidden layers' activation.
    solver : {"adam", "sgd"}, default="adam"
        The optimizer: :class:`ferrograd.optim.Adam` or
        :class:`ferrograd.optim.SGD`. ``"lbfgs"`` is not supported (a
        ``ValueError`` at fit).
    alpha : float, default=0.0001
        Strength of the L2 penalty ``0.5 * alpha * ||W||^2`` per batch,
        divided by the batch's weight, as scikit-learn's; applied as the
        optimizer's weight decay ``alpha / (batch_size * mean sample
        weight)``, on every parameter (biases included).
    batch_size : int or "auto", default="auto"
        Minibatch size; ``"auto"`` is ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        SGD's schedule, as scikit-learn's (``invscaling``:
        ``learning_rate_init / (t_ + 1) ** power_t`` after each epoch;
        ``adaptive``: divided by 5 whenever ``n_iter_no_change`` epochs fail
        to improve by ``tol``). Adam keeps ``learning_rate_init``.
    learning_rate_init : float, default=0.001
        The initial learning rate.
    power_t : float, default=0.5
        The exponent of the ``invscaling`` schedule.
    max_iter : int, default=200
        The maximum number of epochs (one ``partial_fit`` call trains one).
    shuffle : bool, default=True
        Whether to shuffle the samples in every epoch.
    random_state : int, RandomState instance or None, default=None
        Draws the initial weights, the validation split and the seed of
        ferrograd's generator (shuffling, dropout). Training is
        deterministic for an int.
    tol : float, default=1e-4
        Training stops once the loss (or, with ``early_stopping``, the
        validation score) has not improved by ``tol`` for
        ``n_iter_no_change`` consecutive epochs.
    verbose : bool or int, default=False
        Print scikit-learn's progress lines; ``2`` adds ferrograd's own per
        epoch.
    warm_start : bool, default=False
        Continue from the fitted network on the next ``fit`` (with a fresh
        optimizer, as scikit-learn).
    momentum : float, default=0.9
        SGD's momentum.
    nesterovs_momentum : bool, default=True
        Nesterov momentum for SGD (when ``momentum > 0``).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (stratified
        for classification), stop on its score (accuracy or R^2) and restore
        the best epoch's weights.
    validation_fraction : float, default=0.1
        The fraction held out for early stopping.
    beta_1, beta_2, epsilon : float, default=0.9, 0.999, 1e-8
        Adam's parameters.
    n_iter_no_change : int, default=10
        Epochs without improvement by ``tol`` before stopping.
    max_fun : int, default=15000
        Only used by scikit-learn's lbfgs solver; accepted and ignored.
    dropout : float, default=0.0
        Dropout probability after each hidden activation of the built-in
        network (ferrograd's).
    dtype : {"float32", "float64"}, default="float32"
        The precision of the network (ferrograd's).
    layers : callable or None, default=None
        ``layers(n_features, n_outputs) -> list of ferrograd layers`` builds
        a custom network (ferrograd's), for example a CNN; ``X`` may then
        have more than two dimensions, such as ``(N, 1, 28, 28)``, and
        ``n_features`` is ``X.shape[1]`` (the channels of images). The
        network must output ``n_outputs`` values per sample: logits, without
        a final activation. ``hidden_layer_sizes``, ``activation`` and
        ``dropout`` are then unused; the layers keep ferrograd's
        initialization. Use a module-level function for a picklable
        estimator.
"""

_ATTRS_DOC = """
    model_ : ferrograd.Sequential
        The fitted network.
    loss_ : float
        The last epoch's mean loss (with the L2 penalty).
    best_loss_ : float or None
        The lowest ``loss_`` so far (``None`` with early stopping).
    loss_curve_ : list of float
        ``loss_`` of every epoch.
    validation_scores_ : list of float or None
        The held-out score of every epoch with early stopping, else ``None``.
    best_validation_score_ : float or None
        The best of them (``None`` without early stopping).
    t_ : int
        Training samples seen, counting repeats.
    coefs_, intercepts_ : list of ndarray
        The Dense layers' weights ``(n_in, n_out)`` and biases (copies).
    n_features_in_ : int
        Features seen at fit (``X.shape[1]``).
    feature_names_in_ : ndarray of str
        Column names of ``X``, when it had string column names.
    n_iter_ : int
        Epochs run by the latest ``fit`` / ``partial_fit`` call.
    n_layers_ : int
        ``len(hidden_layer_sizes) + 2`` (with ``layers``: the number of
        ferrograd layers plus one, the input).
    n_outputs_ : int
        Outputs of the network.
    out_activation_ : str
        ``"softmax"``, ``"logistic"`` or ``"identity"``, applied to the
        network's outputs by ``predict`` / ``predict_proba``.
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by ferrograd, with
    scikit-learn's ``MLPClassifier`` interface.

    Minimizes softmax cross-entropy (or sigmoid binary cross-entropy for
    two classes and for multilabel indicator targets) with Adam or SGD.
    Labels may be of any type (strings included); binary, multi-class and
    multilabel targets are supported.
    """

    __doc__ = (
        (__doc__ or "").rstrip()
        + "\n"
        + _PARAMS_DOC
        + "\n    Attributes\n    ----------"
        + ("\n    classes_ : ndarray\n        The class labels." + _ATTRS_DOC)
    )

    def __init__(
        self,
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool | int = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        max_fun: int = 15000,
        dropout: float = 0.0,
        dtype: str = "float32",
        layers: Callable[[int, int], Sequence[L.Layer]] | None = None,
    ) -> None:
        super().__init__(
            hidden_layer_sizes,
            activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
            dropout=dropout,
            dtype=dtype,
            layers=layers,
        )

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPClassifier:
        """Trains the network on ``(X, y)`` for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (more dimensions with ``layers``).
        y : array-like of shape (n_samples,) or (n_samples, n_classes)
            Class labels of any type, or a multilabel indicator matrix.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights multiplying each sample's loss term.

        Returns
        -------
        self : MLPClassifier
            The fitted estimator.
        """
        self._fit(X, y, sample_weight, incremental=False)
        return self

    def partial_fit(
        self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None
    ) -> MLPClassifier:
        """Trains one epoch over ``(X, y)``, continuing from the current state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels (or a multilabel indicator matrix).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights multiplying each sample's loss term.
        classes : array-like of shape (n_classes,), default=None
            All the classes, required on the first call (unless ``y`` is a
            multilabel indicator matrix); ``y`` need not contain all of them.

        Returns
        -------
        self : MLPClassifier
            The updated estimator.
        """
        self._check_params()
        if not hasattr(self, "classes_"):
            if type_of_target(y).startswith("multilabel"):
                binarizer = LabelBinarizer().fit(y)
            elif classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            else:
                binarizer = LabelBinarizer().fit(np.asarray(classes))
            if len(binarizer.classes_) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs at least 2 classes; got 1 class in `classes`"
                )
            self._label_binarizer = binarizer
            self.classes_ = binarizer.classes_
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(
                f"`classes={classes!r}` is not the same as on the first call to "
                f"partial_fit, which was {self.classes_!r}"
            )
        self._fit(X, y, sample_weight, incremental=True)
        return self

    def _encode_targets(
        self, y: np.ndarray, first: bool, incremental: bool
    ) -> tuple[np.ndarray, str, int, float]:
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            binarizer = LabelBinarizer().fit(y)
            if len(binarizer.classes_) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes; "
                    f"got 1 class: {binarizer.classes_[0]!r}"
                )
            self._label_binarizer = binarizer
            self.classes_ = binarizer.classes_
        else:
            from sklearn.utils.multiclass import unique_labels

            labels = unique_labels(y)
            if self.warm_start and not incremental:
                if set(labels) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` "
                        f"has {labels}"
                    )
            elif len(np.setdiff1d(labels, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has "
                    f"{self.classes_}. 'y' has {labels}."
                )
        binarizer = self._label_binarizer
        dtype = np.dtype(self.dtype)
        if binarizer.y_type_.startswith("multilabel"):
            self.out_activation_ = "logistic"
            t = np.ascontiguousarray(binarizer.transform(y), dtype=dtype)
            # BCE averages over the outputs; scikit-learn sums them.
            return t, "binary_cross_entropy", t.shape[1], float(t.shape[1])
        if len(self.classes_) == 2:
            self.out_activation_ = "logistic"
            t = (np.asarray(y) == self.classes_[1]).astype(dtype).reshape(-1, 1)
            return np.ascontiguousarray(t), "binary_cross_entropy", 1, 1.0
        self.out_activation_ = "softmax"
        idx = np.searchsorted(self.classes_, y).astype(np.int64)
        return np.ascontiguousarray(idx), "cross_entropy", len(self.classes_), 1.0

    def _proba(self, X: Any) -> np.ndarray:
        return self._proba_from_logits(self._outputs(X))

    def _proba_from_logits(self, z: np.ndarray) -> np.ndarray:
        if self.out_activation_ == "logistic":
            p = _expit(z)
            if self.n_outputs_ == 1:
                return np.hstack([1.0 - p, p])
            return p
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def _labels(self, proba: np.ndarray) -> np.ndarray:
        if self._label_binarizer.y_type_.startswith("multilabel"):
            return self._label_binarizer.inverse_transform(proba)
        return self.classes_[np.argmax(proba, axis=1)]

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The samples.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_classes)
            Labels from ``classes_`` (a 0/1 indicator matrix for multilabel).
        """
        return self._labels(self._proba(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, float64.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The samples.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities in the order of ``classes_`` (per label for multilabel).
        """
        return self._proba(X)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """``log(predict_proba(X))``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The samples.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            The log-probabilities.
        """
        with np.errstate(divide="ignore"):
            return np.log(self._proba(X))

    def _validation_score(self, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None) -> float:
        z = self.model_.predict(X).astype(np.float64)
        pred = self._labels(self._proba_from_logits(z))
        return float(accuracy_score(y, pred, sample_weight=sw))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


# ---------------------------------------------------------------- regressor


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by ferrograd, with
    scikit-learn's ``MLPRegressor`` interface.

    Minimizes half the squared error (scikit-learn's ``squared_error``,
    with its gradient) with Adam or SGD; ``y`` may be 1-d or 2-d (several
    outputs).

    Parameters
    ----------
    loss : {"squared_error"}, default="squared_error"
        The only loss supported (scikit-learn's ``"poisson"`` is not).
    """

    __doc__ = (
        (__doc__ or "").rstrip()
        + "\n"
        + _PARAMS_DOC[_PARAMS_DOC.index("    hidden_layer_sizes") :]
        + ("\n    Attributes\n    ----------" + _ATTRS_DOC)
    )

    def __init__(
        self,
        loss: str = "squared_error",
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool | int = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        max_fun: int = 15000,
        dropout: float = 0.0,
        dtype: str = "float32",
        layers: Callable[[int, int], Sequence[L.Layer]] | None = None,
    ) -> None:
        self.loss = loss
        super().__init__(
            hidden_layer_sizes,
            activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
            dropout=dropout,
            dtype=dtype,
            layers=layers,
        )

    def _check_params(self) -> list[int]:
        if self.loss != "squared_error":
            raise _bad(
                type(self).__name__,
                "loss",
                "'squared_error' (ferrograd has no Poisson loss)",
                self.loss,
            )
        return super()._check_params()

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """Trains the network on ``(X, y)`` for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (more dimensions with ``layers``).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights multiplying each sample's loss term.

        Returns
        -------
        self : MLPRegressor
            The fitted estimator.
        """
        self._fit(X, y, sample_weight, incremental=False)
        return self

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """Trains one epoch over ``(X, y)``, continuing from the current state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights multiplying each sample's loss term.

        Returns
        -------
        self : MLPRegressor
            The updated estimator.
        """
        self._fit(X, y, sample_weight, incremental=True)
        return self

    def _encode_targets(
        self, y: np.ndarray, first: bool, incremental: bool
    ) -> tuple[np.ndarray, str, int, float]:
        y = np.asarray(y)
        if first:
            self._y_ndim = y.ndim
        t = np.ascontiguousarray(y.reshape(len(y), -1), dtype=np.dtype(self.dtype))
        self.out_activation_ = "identity"
        # ferrograd's MSE averages over the outputs without scikit-learn's 1/2.
        return t, "mse", t.shape[1], t.shape[1] / 2.0

    def _loss_report_factor(self) -> float:
        return 1.0 / self.n_outputs_

    def predict(self, X: Any) -> np.ndarray:
        """The network's predictions, float64.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The samples.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predictions, 1-d when ``fit`` got a 1-d ``y``.
        """
        out = self._outputs(X)
        return out.ravel() if self._y_ndim == 1 else out

    def _validation_score(self, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None) -> float:
        out = self.model_.predict(X).astype(np.float64)
        if self._y_ndim == 1:
            out = out.ravel()
        return float(r2_score(y, out, sample_weight=sw))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
