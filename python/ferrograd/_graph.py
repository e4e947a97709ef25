"""Symbolic values of the functional API: :func:`Input` and :class:`Node`.

Calling a layer on a node (``L.Dense(4, 3)(x)``) records the call and
computes the output's per-sample shape right away, with the engine's own
shape rules (``_core.layer_info``) for ordinary layers and the merge rules
below for merge layers, so a shape error raises at the call, naming the
layer and the shapes. :class:`ferrograd.Model` turns the nodes reachable
from its outputs into the engine's graph.

Layer names: a layer made without ``name=`` is named after its class in
lower case, numbered from the second one made in the process on: ``dense``,
``dense_1``, ``dense_2``, ..., ``conv2d``, ``add``, ... (Keras's scheme).
Inputs likewise: ``input``, ``input_1``, ... A ``Sequential`` or ``Model``
called on nodes as a block names its layers under its own name, as torch's
modules do: ``"{block}.{index}"`` for a ``Sequential`` (``layer1.0``, whose
weight is ``layer1.0.weight``), ``"{block}.{layer name}"`` for a ``Model``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core

__all__ = ["Input", "Node"]

_counts: dict[str, int] = {}


def default_name(kind: str) -> str:
    """The next unused default name for a layer (or input) of this kind."""
    base = kind.lower()
    n = _counts.get(base, 0)
    _counts[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def check_name(name: Any, owner: str) -> str:
    """A layer's or input's ``name=``: a non-empty string."""
    if not isinstance(name, str):
        raise TypeError(f"{owner}: name must be a string, got {type(name).__name__}")
    if not name:
        raise ValueError(f"{owner}: name must not be empty")
    return name


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(N, " + ", ".join(map(str, shape)) + ")"


class Node:
    """A symbolic value of a graph model: a model input (made by
    :func:`Input`) or the output of a layer called on nodes.

    ``shape`` is the per-sample shape (no batch dimension); ``layer`` the
    layer that produced it (``None`` for an input); ``inputs`` the nodes
    it was computed from; ``dtype`` the element type of the inputs it
    comes from.
    """

    __slots__ = ("layer", "inputs", "shape", "dtype", "name", "origin")

    def __init__(
        self,
        layer: Any,
        inputs: tuple[Node, ...],
        shape: tuple[int, ...],
        dtype: str,
        name: str,
    ) -> None:
        self.layer = layer
        self.inputs = inputs
        self.shape = shape
        self.dtype = dtype
        #: The input's name, or the producing layer's name in the graph
        #: (nested under a block's name when the layer was called as part of
        #: a ``Sequential`` or ``Model`` block: ``"layer1.0"``).
        self.name = name
        #: For a layer called as part of a block: the block and the layer's
        #: name in it, whose weights the new model starts from.
        self.origin: tuple[Any, str] | None = None

    @property
    def is_input(self) -> bool:
        """Whether this node is a model input."""
        return self.layer is None

    def _describe(self) -> str:
        what = f'input "{self.name}"' if self.is_input else f'the output of "{self.name}"'
        return f"{what} {_shape_text(self.shape)}"

    def __repr__(self) -> str:
        kind = "Input" if self.is_input else type(self.layer).__name__
        return f"<Node {self.name!r} ({kind}) shape={_shape_text(self.shape)}>"


def holds_nodes(x: Any) -> bool:
    """Whether ``x`` is a node or a non-empty list or tuple of nodes (what a
    model called as a block takes), rather than data."""
    if isinstance(x, Node):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(n, Node) for n in x)


def Input(shape: Any, dtype: Any = "float32", name: str | None = None) -> Node:
    """A graph model's input: a symbolic value of per-sample shape ``shape``
    (no batch dimension, e.g. ``(784,)`` or ``(1, 28, 28)``) to call layers
    on. ``dtype`` (``"float32"`` or ``"float64"``) becomes the model's.
    ``name`` (default ``input``, ``input_1``, ...) is the key of this input
    when data is passed as a dict."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"Input: shape must be a tuple of ints, got {shape!r}")
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"Input: shape must be a tuple of ints, got {tuple(shape)!r}")
        if d < 1:
            raise ValueError(f"Input: every dimension must be >= 1, got {tuple(shape)!r}")
        dims.append(int(d))
    if not dims:
        raise ValueError("Input: shape must have at least one dimension (per sample)")
    try:
        dt = np.dtype(dtype).name
    except TypeError:
        dt = str(dtype)
    if dt not in ("float32", "float64"):
        raise ValueError(f'Input: unknown dtype {dtype!r}; expected "float32" or "float64"')
    name = default_name("input") if name is None else check_name(name, "Input")
    return Node(None, (), tuple(dims), dt, name)


def _check_nodes(owner: str, nodes: Any, several: bool) -> tuple[Node, ...]:
    if several:
        if isinstance(nodes, Node) or not isinstance(nodes, (list, tuple)):
            raise TypeError(f"{owner} takes a list of nodes, got {type(nodes).__name__}")
        items = tuple(nodes)
    else:
        items = (nodes,)
    for i, n in enumerate(items):
        if not isinstance(n, Node):
            what = f"input {i}" if several else "its input"
            raise TypeError(
                f"{owner}: {what} is a {type(n).__name__}, expected a node "
                "(fg.Input or the output of a layer called on one)"
            )
    dtypes = {n.dtype for n in items}
    if len(dtypes) > 1:
        raise ValueError(f"{owner}: inputs of different dtypes {sorted(dtypes)}")
    return items


def call_layer(layer: Any, node: Any) -> Node:
    """``layer(node)`` for a single-input layer: the output node, its shape
    from the engine."""
    owner = f'{type(layer).__name__} "{layer.name}"'
    (x,) = _check_nodes(owner, node, several=False)
    try:
        info = _core.layer_info(layer._spec(), list(x.shape))
    except ValueError as e:
        raise type(e)(f"{owner} called on {x._describe()}: {e}") from None
    return Node(layer, (x,), tuple(info["output_shape"]), x.dtype, layer.name)


def merge_shape(kind: str, axis: int | None, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """A merge layer's per-sample output shape (the engine's rules): the
    elementwise merges need equal shapes (``Subtract`` exactly two inputs);
    ``Concatenate`` equal shapes except on ``axis`` (which counts the batch
    dimension). Raises ``ValueError`` (``fg.ShapeError`` for shapes)."""
    n = len(shapes)
    if n < 2 or (kind == "Subtract" and n != 2):
        want = "exactly 2" if kind == "Subtract" else "at least 2"
        raise ValueError(f"takes {want} inputs, got {n}")
    if kind != "Concatenate":
        if any(s != shapes[0] for s in shapes):
            raise _core.ShapeError(f"needs inputs of the same shape, got {shapes}")
        return shapes[0]
    assert axis is not None
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise _core.ShapeError(f"needs inputs of the same rank, got {shapes}")
    full = rank + 1
    a = axis + full if axis < 0 else axis
    if a <= 0 or a >= full:
        why = " (the batch dimension cannot be concatenated)" if a == 0 else ""
        raise ValueError(
            f"axis {axis} is out of range for inputs of {full} dimensions (batch included){why}"
        )
    a -= 1
    for s in shapes:
        if any(d != a and u != v for d, (u, v) in enumerate(zip(s, shapes[0]))):
            raise _core.ShapeError(
                f"on axis {axis} needs inputs that match except on that axis, got {shapes}"
            )
    out = list(shapes[0])
    out[a] = sum(s[a] for s in shapes)
    return tuple(out)


def call_merge(layer: Any, nodes: Any) -> Node:
    """``merge([a, b, ...])``: the output node, its shape by the merge rules."""
    owner = f'{type(layer).__name__} "{layer.name}"'
    xs = _check_nodes(owner, nodes, several=True)
    try:
        shape = merge_shape(layer.kind, getattr(layer, "axis", None), [x.shape for x in xs])
    except ValueError as e:
        called = ", ".join(x._describe() for x in xs)
        raise type(e)(f"{owner} {e}; called on {called}") from None
    return Node(layer, xs, shape, xs[0].dtype, layer.name)
