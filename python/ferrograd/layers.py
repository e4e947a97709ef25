"""Layers for :class:`ferrograd.Sequential`.

Layers here are light descriptions (with PyTorch's argument names); the
model compiles them into the Rust engine, which owns the parameters. The
class names and ``state_dict`` keys match ``torch.nn`` (``Dense`` is
``torch.nn.Linear``).

Each class checks the *types* of its arguments; the values (sizes >= 1,
probabilities in range, known names) are checked once, by the engine, when
the layer is created, so a bad value raises a ``ValueError`` right away.

The engine's layer registry is the one source of what a layer is: its
arguments (which attributes the JSON spec holds, in order), its parameter
names, shapes and count. The classes here add the docstrings, signatures
and type checks; ``tests/test_layer_registry.py`` checks that both agree.
"""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

from . import _core, _graph

__all__ = [
    "Layer",
    "Dense",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "GELU",
    "Softmax",
    "Dropout",
    "Flatten",
    "Rescaling",
    "Conv2D",
    "Conv1D",
    "ConvTranspose2D",
    "Upsample2D",
    "Identity",
    "MaxPool2D",
    "AvgPool2D",
    "MaxPool1D",
    "AvgPool1D",
    "GlobalAvgPool2D",
    "BatchNorm1D",
    "BatchNorm2D",
    "Merge",
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Concatenate",
    "from_spec",
]


def _int(name: str, value: Any, owner: str) -> int:
    """``value`` as an int (Python or numpy integer, not a bool)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    return int(value.__index__())


def _number(name: str, value: Any, owner: str) -> float:
    """``value`` as a float (any real number; the engine checks its range)."""
    if isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a number, got a bool")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}") from None
    except OverflowError:
        raise ValueError(f"{owner}: {name} is too large for a float") from None


def _pair(name: str, value: Any, owner: str) -> tuple[int, int]:
    """An int or a pair of ints, as a pair (PyTorch's ``_pair``)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise TypeError(f"{owner}: {name} must be an int or a pair of ints, got {value!r}")
        return (_int(name, value[0], owner), _int(name, value[1], owner))
    v = _int(name, value, owner)
    return (v, v)


def _padding(value: Any, owner: str, dims: int) -> Any:
    """``"same"``/``"valid"`` (any string: the engine checks it), or sizes."""
    if isinstance(value, str):
        return value
    if dims == 1:
        return _int("padding", value, owner)
    return _pair("padding", value, owner)


def _json_value(v: Any) -> Any:
    """JSON has no NaN or infinity: send them as strings the engine reads
    (and then refuses with a message naming the argument)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v


_ARGUMENTS: dict[str, tuple[str, ...]] = {name: tuple(args) for name, args in _core.layer_types()}


class Layer:
    """Base class of all layers."""

    #: Name of the Rust layer this describes.
    kind: str = ""

    def __init__(self, name: str | None = None) -> None:
        #: The layer's name in a graph model (its ``state_dict`` prefix
        #: there): ``name=``, or ``dense``, ``dense_1``, ... by default
        #: (see :func:`ferrograd.Input`). A :class:`~ferrograd.Sequential`
        #: names its layers by position instead.
        self.name = (
            _graph.default_name(type(self).__name__)
            if name is None
            else (_graph.check_name(name, type(self).__name__))
        )

    def __call__(self, node: _graph.Node) -> _graph.Node:
        """Calls the layer on a node of a graph model (:func:`ferrograd.Input`
        or another layer's output): the output node, whose per-sample shape
        is computed now (a mismatch raises ``ValueError`` naming the layer
        and the shapes). Calling one layer object on several nodes shares
        its weights."""
        return _graph.call_layer(self, node)

    def _config(self) -> dict[str, Any]:
        """The constructor's arguments as the engine registers them (in its
        order), read from the attributes of the same names."""
        return {name: getattr(self, name) for name in _ARGUMENTS.get(self.kind, ())}

    def _spec(self) -> str:
        """The layer as the engine reads it: a JSON object."""
        config = {k: _json_value(v) for k, v in self._config().items()}
        return json.dumps({"type": self.kind, **config})

    def _check(self) -> None:
        """Has the engine check the values (raises ``ValueError``)."""
        _core.check_layer(self._spec())

    def num_params(self) -> int:
        """Number of trainable scalars in this layer (as the engine declares
        its parameters)."""
        if not self.kind:
            return 0
        # Summed here, exactly, so that an absurd size read from a file is
        # still counted (and refused by the loader with the count).
        return sum(math.prod(shape) for _, shape in _core.layer_info(self._spec())["params"])

    def __repr__(self) -> str:
        """The arguments as one would write them: required ones by
        position (a pair of equal sizes as one int), the others only when
        they differ from their defaults."""
        config = self._config()
        parts = []
        params = list(inspect.signature(type(self).__init__).parameters.values())[1:]
        for p in params:
            if p.name not in config:
                continue
            v = config[p.name]
            if isinstance(v, tuple) and len(set(v)) == 1:
                short = v[0]
            else:
                short = v
            if p.default is inspect.Parameter.empty:
                parts.append(repr(short))
            elif short != p.default and not (
                # Pooling's stride defaults to (None, meaning) the kernel size.
                p.name == "stride" and p.default is None and v == config.get("kernel_size")
            ):
                parts.append(f"{p.name}={short!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._spec() == other._spec()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self._spec())


class Dense(Layer):
    """Fully connected layer ``y = x W^T + b`` (``torch.nn.Linear``).

    Parameters
    ----------
    in_features, out_features:
        Sizes of each input and output sample (the last dimension).
    bias:
        Whether to learn an additive bias.
    init:
        Weight initialisation: ``"he"`` (Kaiming normal, std ``sqrt(2/in)``,
        for ReLU networks; the default), ``"xavier"`` (Glorot uniform),
        ``"lecun"`` (normal, std ``sqrt(1/in)``) or ``"zeros"``. Biases start
        at zero.

    The weight has shape ``(out_features, in_features)`` as in PyTorch.
    """

    kind = "Dense"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: str = "he",
        name: str | None = None,
    ) -> None:
        self.in_features = _int("in_features", in_features, "Dense")
        self.out_features = _int("out_features", out_features, "Dense")
        self.bias = bool(bias)
        self.init = init
        super().__init__(name)
        self._check()


class ReLU(Layer):
    """``max(x, 0)``."""

    kind = "ReLU"


class LeakyReLU(Layer):
    """``x`` for ``x > 0``, else ``negative_slope * x``."""

    kind = "LeakyReLU"

    def __init__(self, negative_slope: float = 0.01, name: str | None = None) -> None:
        self.negative_slope = _number("negative_slope", negative_slope, "LeakyReLU")
        super().__init__(name)
        self._check()


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``."""

    kind = "Sigmoid"


class Tanh(Layer):
    """Hyperbolic tangent."""

    kind = "Tanh"


class GELU(Layer):
    """Gaussian error linear unit, exact form ``x * Phi(x)`` (torch's default)."""

    kind = "GELU"


class Softmax(Layer):
    """Softmax over the last dimension (``torch.nn.Softmax(dim=-1)``).

    For classification train on logits with ``CrossEntropy`` instead, which
    fuses a stable log-softmax; use this layer for probabilities at the end.
    """

    kind = "Softmax"


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability ``p``
    and scale the rest by ``1 / (1 - p)``; the identity in evaluation."""

    kind = "Dropout"

    def __init__(self, p: float = 0.5, name: str | None = None) -> None:
        self.p = _number("p", p, "Dropout")
        super().__init__(name)
        self._check()


class Flatten(Layer):
    """Flattens each sample to one dimension: ``(N, d1, d2, ...) -> (N, d1*d2*...)``."""

    kind = "Flatten"


class Rescaling(Layer):
    """``x * scale + offset`` with fixed values, like Keras' ``Rescaling``.

    ``Rescaling(1/255)`` lets uint8 images be passed as they are: they are
    converted batch by batch instead of as a whole float copy.
    """

    kind = "Rescaling"

    def __init__(self, scale: float, offset: float = 0.0, name: str | None = None) -> None:
        self.scale = _number("scale", scale, "Rescaling")
        self.offset = _number("offset", offset, "Rescaling")
        super().__init__(name)
        self._check()


class _Conv(Layer):
    dims = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        bias: bool = True,
        init: str = "he",
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        self.in_channels = _int("in_channels", in_channels, owner)
        self.out_channels = _int("out_channels", out_channels, owner)
        size: Any = _int if self.dims == 1 else _pair
        self.kernel_size: Any = size("kernel_size", kernel_size, owner)
        self.stride: Any = size("stride", stride, owner)
        self.padding: Any = _padding(padding, owner, self.dims)
        self.dilation: Any = size("dilation", dilation, owner)
        self.bias = bool(bias)
        self.init = init
        super().__init__(name)
        self._check()


class Conv2D(_Conv):
    """2-D convolution over ``(N, C, H, W)`` (``torch.nn.Conv2d``).

    Parameters
    ----------
    in_channels, out_channels:
        Channels of each input and output sample.
    kernel_size, stride, dilation:
        An int or a pair ``(height, width)``.
    padding:
        Zeros added on each side: an int or a pair, ``"valid"`` (none) or
        ``"same"`` (the output as large as the input; stride 1 only, and for
        an even kernel the extra row and column go at the bottom and right,
        as in torch).
    bias:
        Whether to learn an additive bias per output channel.
    init:
        Weight initialisation as for :class:`Dense`, with
        ``fan_in = in_channels * kernel area``; biases start at zero.

    The weight has shape ``(out_channels, in_channels, kh, kw)`` as in
    PyTorch. The output has ``floor((H + 2p - d(k - 1) - 1) / s) + 1`` rows
    (likewise columns).
    """

    kind = "Conv2D"
    dims = 2


class Conv1D(_Conv):
    """1-D convolution over ``(N, C, L)`` (``torch.nn.Conv1d``); arguments
    as :class:`Conv2D`, each a single int. Weight ``(out_channels,
    in_channels, kernel_size)``."""

    kind = "Conv1D"
    dims = 1


class ConvTranspose2D(Layer):
    """2-D transposed convolution over ``(N, C, H, W)``
    (``torch.nn.ConvTranspose2d``): the gradient of a convolution with
    respect to its input, used to upsample (a U-Net's decoder).

    Parameters
    ----------
    in_channels, out_channels:
        Channels of each input and output sample.
    kernel_size, stride, dilation:
        An int or a pair ``(height, width)``.
    padding:
        An int or a pair: rows and columns cropped from each side of the
        full output (``dilation * (kernel_size - 1) - padding`` zeros are
        implicitly added to the input, as in torch).
    output_padding:
        An int or a pair: rows and columns added on the bottom and right
        of the output, to pick one of the sizes a strided convolution maps
        to the same size; must be smaller than the stride or the dilation.
    bias:
        Whether to learn an additive bias per output channel.
    init:
        Weight initialisation as for :class:`Conv2D`, with torch's fans for
        this weight shape (``fan_in = out_channels * kernel area``); biases
        start at zero.

    The weight has shape ``(in_channels, out_channels, kh, kw)`` as in
    PyTorch. The output has ``(H - 1) * s - 2p + d(k - 1) + output_padding
    + 1`` rows (likewise columns): ``ConvTranspose2D(c, c // 2, 2,
    stride=2)`` and ``ConvTranspose2D(c, c // 2, 3, stride=2, padding=1,
    output_padding=1)`` both double ``H`` and ``W``.
    """

    kind = "ConvTranspose2D"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        output_padding: Any = 0,
        dilation: Any = 1,
        bias: bool = True,
        init: str = "he",
        name: str | None = None,
    ) -> None:
        owner = "ConvTranspose2D"
        self.in_channels = _int("in_channels", in_channels, owner)
        self.out_channels = _int("out_channels", out_channels, owner)
        self.kernel_size = _pair("kernel_size", kernel_size, owner)
        self.stride = _pair("stride", stride, owner)
        self.padding = _pair("padding", padding, owner)
        self.output_padding = _pair("output_padding", output_padding, owner)
        self.dilation = _pair("dilation", dilation, owner)
        self.bias = bool(bias)
        self.init = init
        super().__init__(name)
        self._check()


class Upsample2D(Layer):
    """Upsampling of ``(N, C, H, W)`` to ``(N, C, H * sh, W * sw)``
    (``torch.nn.Upsample(scale_factor=..., mode=...)``).

    Parameters
    ----------
    scale_factor:
        A whole factor, or a pair ``(sh, sw)``.
    mode:
        ``"nearest"`` (each value repeated over its ``sh x sw`` block) or
        ``"bilinear"`` (torch's ``align_corners=False``: output pixel
        centres mapped back onto the input, edges clamped).

    The gradient of each input is the sum of the gradients of the outputs
    made from it (times their interpolation weights). No parameters.
    """

    kind = "Upsample2D"

    def __init__(
        self, scale_factor: Any = 2, mode: str = "nearest", name: str | None = None
    ) -> None:
        self.scale_factor = _pair("scale_factor", scale_factor, "Upsample2D")
        if not isinstance(mode, str):
            raise TypeError(f"Upsample2D: mode must be a string, got {type(mode).__name__}")
        self.mode = mode
        super().__init__(name)
        self._check()


class Identity(Layer):
    """``y = x`` (``torch.nn.Identity``): a placeholder, e.g. for a block
    switched off in a configurable stack. It copies its input."""

    kind = "Identity"


class _Pool(Layer):
    dims = 2

    def __init__(
        self, kernel_size: Any, stride: Any = None, padding: Any = 0, name: str | None = None
    ) -> None:
        owner = type(self).__name__
        size: Any = _int if self.dims == 1 else _pair
        self.kernel_size: Any = size("kernel_size", kernel_size, owner)
        self.stride: Any = self.kernel_size if stride is None else size("stride", stride, owner)
        self.padding: Any = size("padding", padding, owner)
        super().__init__(name)
        self._check()


class MaxPool2D(_Pool):
    """Maximum over windows of ``(N, C, H, W)`` (``torch.nn.MaxPool2d``).

    ``kernel_size``, ``stride`` (default: ``kernel_size``) and ``padding``
    are ints or pairs; padding counts as minus infinity and may be at most
    half the kernel. The gradient goes to the first maximum of each window.
    """

    kind = "MaxPool2D"


class AvgPool2D(_Pool):
    """Mean over windows of ``(N, C, H, W)`` (``torch.nn.AvgPool2d`` with
    ``count_include_pad=True``: padded zeros count in the mean)."""

    kind = "AvgPool2D"


class MaxPool1D(_Pool):
    """Maximum over windows of ``(N, C, L)`` (``torch.nn.MaxPool1d``)."""

    kind = "MaxPool1D"
    dims = 1


class AvgPool1D(_Pool):
    """Mean over windows of ``(N, C, L)`` (``torch.nn.AvgPool1d``,
    ``count_include_pad=True``)."""

    kind = "AvgPool1D"
    dims = 1


class GlobalAvgPool2D(Layer):
    """Mean over each channel's ``(H, W)``: ``(N, C, H, W) -> (N, C)``."""

    kind = "GlobalAvgPool2D"


class _BatchNorm(Layer):
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        self.num_features = _int("num_features", num_features, owner)
        self.eps = _number("eps", eps, owner)
        self.momentum = None if momentum is None else _number("momentum", momentum, owner)
        super().__init__(name)
        self._check()


class BatchNorm1D(_BatchNorm):
    """Batch normalization over ``(N, C)`` or ``(N, C, L)`` (``torch.nn.BatchNorm1d``).

    In training mode each channel is normalized with the batch's mean and
    (biased) variance, then scaled by ``weight`` and shifted by ``bias``;
    the running statistics move toward the batch's (the variance's unbiased
    estimate) by ``momentum``, or as a cumulative average with
    ``momentum=None``. In evaluation mode the running statistics are used.
    ``state_dict`` holds ``weight``, ``bias``, ``running_mean``,
    ``running_var`` and the int64 ``num_batches_tracked``, as torch's.
    Training needs more than one value per channel in a batch.
    """

    kind = "BatchNorm1D"


class BatchNorm2D(_BatchNorm):
    """Batch normalization over ``(N, C, H, W)`` (``torch.nn.BatchNorm2d``);
    see :class:`BatchNorm1D`."""

    kind = "BatchNorm2D"


class Merge:
    """Base class of the merge layers, which combine several nodes of a
    graph model into one: ``L.Add()([a, b])``. They have no parameters and
    are not :class:`Layer` s (a :class:`~ferrograd.Sequential` cannot hold
    them)."""

    #: Name of the Rust merge layer this describes.
    kind: str = ""

    def __init__(self, name: str | None = None) -> None:
        #: The layer's name in a graph model (default ``add``, ``add_1``, ...).
        self.name = (
            _graph.default_name(type(self).__name__)
            if name is None
            else (_graph.check_name(name, type(self).__name__))
        )

    def _config(self) -> dict[str, Any]:
        return {}

    def _spec(self) -> str:
        """The layer as the engine reads it: a JSON object."""
        return json.dumps({"type": self.kind, **self._config()})

    def num_params(self) -> int:
        """Number of trainable scalars: none."""
        return 0

    def __call__(self, nodes: list[_graph.Node]) -> _graph.Node:
        """Merges a list of nodes (a graph model's inputs or layer outputs)
        into one; the shapes are checked now (``ValueError`` naming the
        layer and the shapes)."""
        return _graph.call_merge(self, nodes)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"


class Add(Merge):
    """Elementwise sum of two or more nodes of the same shape."""

    kind = "Add"


class Subtract(Merge):
    """``a - b`` of exactly two nodes of the same shape."""

    kind = "Subtract"


class Multiply(Merge):
    """Elementwise product of two or more nodes of the same shape."""

    kind = "Multiply"


class Average(Merge):
    """Elementwise mean of two or more nodes of the same shape."""

    kind = "Average"


class Concatenate(Merge):
    """Joins two or more nodes along ``axis`` (``torch.cat(dim=axis)``):
    the axis counts the batch dimension, so the default ``1`` is the first
    per-sample dimension (features, or channels of ``(N, C, H, W)``);
    negative values count from the end. The other dimensions must match."""

    kind = "Concatenate"

    def __init__(self, axis: int = 1, name: str | None = None) -> None:
        self.axis = _int("axis", axis, "Concatenate")
        if self.axis == 0:
            raise ValueError("Concatenate: axis 0 is the batch dimension, which cannot be joined")
        super().__init__(name)

    def _config(self) -> dict[str, Any]:
        return {"axis": self.axis}


def _layer_classes() -> dict[str, type[Layer]]:
    """Every concrete layer class by its engine name."""
    out: dict[str, type[Layer]] = {}
    todo = list(Layer.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.kind:
            out[cls.kind] = cls
    return out


def from_spec(spec: Any) -> Layer:
    """The layer a spec describes: a mapping (or its JSON text) with
    ``"type"`` (the class name) and the constructor's arguments, as
    ``Layer._spec()`` writes it and saved models record it. An unknown type
    or argument raises ``ValueError`` naming it; the values are checked as
    the constructor checks them."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"a layer spec is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ValueError(f'a layer spec must be an object with a "type", got {spec!r}')
    config = dict(spec)
    kind = config.pop("type")
    classes = _layer_classes()
    cls = classes.get(kind)
    if cls is None:
        raise ValueError(f"unknown layer type {kind!r}; known: {', '.join(sorted(classes))}")
    params = _ARGUMENTS.get(kind, ())
    unknown = [k for k in config if k not in params]
    if unknown:
        raise ValueError(f"{kind}: unknown argument(s) {', '.join(map(repr, unknown))}")
    for k, v in config.items():
        if v in ("nan", "inf", "-inf") and k != "padding" and k != "init":
            config[k] = float(v)
    try:
        return cls(**config)
    except TypeError as e:
        raise ValueError(f"{kind}: {e}") from None
