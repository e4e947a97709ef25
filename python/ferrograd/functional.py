"""``Model``: graph models built with the functional API (Keras style).

::

    x = fg.Input((16,))
    h = L.ReLU()(L.Dense(16, 16)(x))
    y = L.Dense(16, 1)(L.Add()([x, L.Dense(16, 16)(h)]))
    model = fg.Model(x, y, seed=0)

A :class:`Model` shares :class:`~ferrograd.Sequential`'s implementation
(:class:`~ferrograd.model.BaseModel`: parameters, ``state_dict``, ``fit``,
``evaluate``, ``predict``, files, pickling) and differs in what it takes:
several inputs (data as a list in input order or a dict by input name),
several outputs (targets likewise, by output name; ``loss`` one for all, a
list or a dict; ``loss_weights``), and ``predict`` returning a list for
several outputs. The graph is checked when the model is built.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Callable, cast

import numpy as np

from . import _core, _graph, losses
from . import layers as _layers
from ._data import ShapeError, as_features, as_target
from ._graph import Input, Node
from .model import _DTYPES, DEFAULT_EVAL_BATCH, BaseModel, _int_arg

__all__ = ["Model", "Input", "Node"]

_MERGES: dict[str, type[_layers.Merge]] = {
    cls.kind: cls
    for cls in (
        _layers.Add,
        _layers.Subtract,
        _layers.Multiply,
        _layers.Average,
        _layers.Concatenate,
    )
}


def _node_list(nodes: Any, what: str) -> list[Node]:
    items = list(nodes) if isinstance(nodes, (list, tuple)) else [nodes]
    if not items:
        raise ValueError(f"Model: {what} must not be empty")
    for i, n in enumerate(items):
        if not isinstance(n, Node):
            raise TypeError(
                f"Model: {what}[{i}] is a {type(n).__name__}, expected a node "
                "(fg.Input or a layer's output)"
            )
    return items


def _topological(inputs: list[Node], outputs: list[Node]) -> list[Node]:
    """The layer nodes the outputs are computed from, each after its
    inputs, in a fixed order (depth first from the outputs); raises
    ``ValueError`` for a graph the model cannot compute."""
    known = {id(n): n for n in inputs}
    for i, n in enumerate(inputs):
        if not n.is_input:
            raise ValueError(f'Model: inputs[{i}] ("{n.name}") is a layer output, not an fg.Input')
    if len(known) != len(inputs):
        raise ValueError("Model: an input is listed twice")
    used: set[int] = set()
    for k, out in enumerate(outputs):
        if out.is_input:
            raise ValueError(
                f'Model: outputs[{k}] is the input "{out.name}" itself; an output must be '
                "computed by a layer"
            )
        foreign: list[str] = []
        reached = False
        seen: set[int] = set()
        todo = [out]
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if not node.is_input:
                todo.extend(node.inputs)
            elif id(node) in known:
                reached = True
                used.add(id(node))
            else:
                foreign.append(node.name)
        if foreign:
            names = ", ".join(f'"{n}"' for n in dict.fromkeys(foreign))
            if not reached:
                raise ValueError(
                    f'Model: output "{out.name}" is not reachable from the model\'s inputs: '
                    f"it is computed from input(s) {names}"
                )
            raise ValueError(
                f'Model: output "{out.name}" depends on input(s) {names}, which are not '
                "among the model's inputs (a node from another fg.Input)"
            )
    unused = [n.name for n in inputs if id(n) not in used]
    if unused:
        raise ValueError(
            f'Model: input "{unused[0]}" is not used by any output; '
            "leave it out of the inputs or use it"
        )
    order: list[Node] = []
    done: set[int] = set(known)
    for out in outputs:
        stack: list[tuple[Node, bool]] = [(out, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((x, False) for x in reversed(node.inputs) if id(x) not in done)
    return order


class Model(BaseModel):
    """A graph of layers (Keras's functional API) trained by
    backpropagation in Rust.

    Parameters
    ----------
    inputs:
        An :func:`~ferrograd.Input` node, or a list of them (their order is
        the order of the data's inputs).
    outputs:
        A node (a layer's output), or a list of them.
    name:
        The model's name (default ``model``, ``model_1``, ...).
    seed:
        As :class:`~ferrograd.Sequential`'s: fixes the initial weights,
        shuffling and dropout masks.

    The dtype is the inputs' (:func:`~ferrograd.Input`'s ``dtype``).
    ``state_dict`` keys are ``"{layer name}.{param}"`` (``"dense.weight"``);
    a layer called several times is one set of weights. The graph is
    checked here: every output must be computed from the given inputs only,
    every input must be used, and layer and input names must be unique,
    else ``ValueError`` names the problem.

    Data for ``fit``, ``evaluate``, ``predict`` and :func:`~ferrograd.gradcheck`:
    one array per input, as a list (input order) or a dict by input name
    (one array alone for a single input); targets likewise per output (by
    :attr:`output_names`). ``loss``: one loss for every output, a list, or a
    dict by output name; ``loss_weights``: the outputs' weights in the
    total loss (list or dict). The epoch logs and ``evaluate`` report the
    weighted total as ``loss`` and, with several outputs, each output's own
    loss as ``{name}_loss`` and, for a classification output,
    ``{name}_accuracy`` (Keras's names; ``val_`` before them for the
    validation data); a single classification output logs ``accuracy``.
    """

    def __init__(
        self,
        inputs: Node | Sequence[Node],
        outputs: Node | Sequence[Node],
        name: str | None = None,
        seed: int | None = None,
    ) -> None:
        self._setup(inputs, outputs, name, seed, init=True)

    def _setup(self, inputs: Any, outputs: Any, name: Any, seed: Any, init: bool) -> None:
        ins, outs = _node_list(inputs, "inputs"), _node_list(outputs, "outputs")
        order = _topological(ins, outs)
        dtypes = {n.dtype for n in ins}
        if len(dtypes) > 1:
            raise ValueError(f"Model: inputs of different dtypes {sorted(dtypes)}")
        layers: list[Any] = []
        first: dict[int, Node] = {}  # each layer's first node: its name in the graph
        for node in order:
            if id(node.layer) not in first:
                first[id(node.layer)] = node
                layers.append(node.layer)
        lnames = [first[id(ly)].name for ly in layers]
        owners: dict[str, str] = {}
        for what, nm in [*(("input", n.name) for n in ins), *(("layer", nm) for nm in lnames)]:
            if nm in owners:
                raise ValueError(
                    f'Model: the name "{nm}" is used twice ({owners[nm]} and {what}); '
                    "pass name= to tell them apart"
                )
            owners[nm] = what
        value = {id(n): i for i, n in enumerate(ins)}
        value.update({id(n): len(ins) + j for j, n in enumerate(order)})
        index = {id(ly): i for i, ly in enumerate(layers)}
        graph = {
            "inputs": [{"name": n.name, "shape": list(n.shape)} for n in ins],
            "layers": [
                {"name": nm, "spec": json.loads(ly._spec())} for nm, ly in zip(lnames, layers)
            ],
            "nodes": [
                {"layer": index[id(n.layer)], "inputs": [value[id(x)] for x in n.inputs]}
                for n in order
            ],
            "outputs": [value[id(n)] for n in outs],
        }
        if seed is None:
            seed = secrets.randbits(63)
        seed = _int_arg("seed", seed, 0)
        if seed >= 2**64:
            raise ValueError(f"seed must be < 2**64, got {seed}")
        dtype = _DTYPES[dtypes.pop()]
        core = _core.Model([], dtype.name, seed, init, graph=json.dumps(graph))
        self._init_core(core, seed, dtype)
        self._copy_block_weights([first[id(ly)] for ly in layers])
        #: The model's name.
        self.name = (
            _graph.default_name("model") if name is None else (_graph.check_name(name, "Model"))
        )
        #: The input and output nodes, as given.
        self.inputs, self.outputs = ins, outs
        #: The layers (and merge layers), each once, in the order they run.
        self.layers = layers
        self._nodes = order
        #: The inputs' names: the keys of dict data.
        self.input_names = [n.name for n in ins]
        names = [n.name for n in outs]
        #: The outputs' names (their layers', numbered when a layer gives
        #: several): the keys of dict targets, losses and loss weights.
        self.output_names = [
            nm if names.count(nm) == 1 else f"{nm}_{names[:k].count(nm)}"
            for k, nm in enumerate(names)
        ]

    def _copy_block_weights(self, nodes: list[Node]) -> None:
        """Starts the layers called as part of a block (a ``Sequential`` or
        ``Model`` called on nodes) from the block's current weights."""
        blocks = [n for n in nodes if n.origin is not None]
        if not blocks:
            return
        state = self.state_dict()
        sources: dict[int, Any] = {}
        for node in blocks:
            block, local = node.origin  # type: ignore[misc]
            theirs = sources.setdefault(id(block), block.state_dict())
            for key, value in theirs.items():
                if key.startswith(local + "."):
                    state[node.name + key[len(local) :]] = value
        self.load_state_dict(state)

    def _call_block(self, nodes: Any) -> Node | list[Node]:
        """``model(nodes)``: the whole model as a block of another graph model:
        its layers are applied to ``nodes`` (one per input, in order) and
        appear in the new model under ``"{this model's name}.{layer name}"``
        (``state_dict`` keys ``"encoder.dense.weight"``), starting from this
        model's current weights. Returns the output node (a list for
        several outputs)."""
        given = _node_list(nodes, "inputs")
        if len(given) != len(self.inputs):
            raise ValueError(
                f'Model "{self.name}" takes {len(self.inputs)} input(s), got {len(given)}'
            )
        for inner, outer in zip(self.inputs, given):
            if inner.shape != outer.shape:
                raise ValueError(
                    f'Model "{self.name}": input "{inner.name}" takes samples of shape '
                    f"{inner.shape}, got {outer._describe()}"
                )
        made: dict[int, Node] = {id(i): o for i, o in zip(self.inputs, given)}
        for node in self._nodes:
            args = [made[id(x)] for x in node.inputs]
            out = node.layer(args) if isinstance(node.layer, _layers.Merge) else node.layer(*args)
            out.name = f"{self.name}.{node.name}"
            out.origin = (self, node.name)
            made[id(node)] = out
        outs = [made[id(o)] for o in self.outputs]
        return outs[0] if len(outs) == 1 else outs

    @classmethod
    def _from_graph(cls, graph: Any, name: Any, seed: int, dtype: Any, init: bool) -> Model:
        """The model a saved graph describes (a model file's architecture)."""
        if not isinstance(graph, Mapping):
            raise ValueError("the graph must be a JSON object")
        try:
            ins = [Input(i["shape"], dtype, i["name"]) for i in graph["inputs"]]
            values: list[Node] = list(ins)
            made: list[Any] = []
            for entry in graph["layers"]:
                spec = dict(entry["spec"])
                merge = _MERGES.get(str(spec.get("type")))
                if merge is not None:
                    spec.pop("type")
                    made.append(merge(**spec, name=entry["name"]))
                else:
                    layer = _layers.from_spec(spec)
                    layer.name = _graph.check_name(entry["name"], type(layer).__name__)
                    made.append(layer)
            for nd in graph["nodes"]:
                layer = made[nd["layer"]]
                args = [values[v] for v in nd["inputs"]]
                values.append(layer(args) if isinstance(layer, _layers.Merge) else layer(*args))
            outs = [values[v] for v in graph["outputs"]]
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"the graph is malformed ({type(e).__name__}: {e})") from None
        model = cls.__new__(cls)
        model._setup(ins, outs, name, seed, init)
        return model

    def _graph(self) -> dict[str, Any]:
        """The graph as the engine holds it (JSON object)."""
        return cast(dict[str, Any], json.loads(self._core.graph_json()))

    # Pickle and copy.deepcopy rebuild these from the model file.
    _REBUILT = BaseModel._REBUILT | frozenset(
        {"inputs", "outputs", "_nodes", "input_names", "output_names", "name"}
    )

    # ------------------------------------------------------------ data

    def _by_name(self, data: Any, names: list[str], what: str, arrays: bool) -> list[Any]:
        """``data`` as one item per name: a dict by name, a list/tuple in
        order, or (one name) the item itself."""
        if isinstance(data, Mapping):
            unknown = [k for k in data if k not in names]
            if unknown:
                raise ValueError(
                    f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; expected {names}"
                )
            missing = [k for k in names if k not in data]
            if missing:
                raise ValueError(f"{what}: missing key(s) {', '.join(map(repr, missing))}")
            return [data[k] for k in names]
        if len(names) == 1:
            if (
                isinstance(data, (list, tuple))
                and len(data) == 1
                and (not arrays or isinstance(data[0], np.ndarray))
            ):
                return [data[0]]
            return [data]
        if not isinstance(data, (list, tuple)):
            raise TypeError(
                f"{what}: the model has {len(names)} ({', '.join(names)}); pass a list or "
                f"a dict by name, got {type(data).__name__}"
            )
        if len(data) != len(names):
            raise ValueError(f"{what}: expected {len(names)} ({', '.join(names)}), got {len(data)}")
        return list(data)

    def _features(self, x: Any, what: str) -> Any:
        items = self._by_name(x, self.input_names, f"{what} (one array per input)", True)
        out = []
        for node, item in zip(self.inputs, items):
            arr = as_features(item, self.dtype, f'{what} "{node.name}"')
            if tuple(arr.shape[1:]) != node.shape:
                raise ShapeError(
                    f'{what}: input "{node.name}" expects samples of shape {node.shape}, '
                    f"got {tuple(arr.shape[1:])}"
                )
            out.append(arr)
        return out

    def _loss(self, loss: Any) -> tuple[Any, str]:
        if isinstance(loss, (Mapping, list, tuple)):
            items = self._by_name(loss, self.output_names, "loss (one per output)", False)
        else:
            items = [loss] * len(self.outputs)
        fns = [losses.get(item) for item in items]
        return fns, json.dumps([f._spec() for f in fns])

    def _loss_weights(self, loss_weights: Any) -> list[float] | None:
        if loss_weights is None:
            return None
        items = self._by_name(loss_weights, self.output_names, "loss_weights", False)
        out = []
        for w in items:
            if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)):
                raise TypeError(f"loss_weights must hold numbers, got {w!r}")
            out.append(float(w))
        return out

    def _metrics_for(self, loss: Any, metrics: Any) -> tuple[str, ...]:
        if len(loss) == 1:
            return super()._metrics_for(loss[0], metrics)
        if metrics:
            raise ValueError("metrics are supported for models with one output only")
        return ()

    def _layer_calls(self) -> list[tuple[str, str]]:
        return [(node.name, type(node.layer).__name__) for node in self._nodes]

    def _per_output(self, loss: Any) -> list[tuple[str, bool]]:
        if len(self.outputs) == 1:
            return []
        return [(name, fn.name != "mse") for name, fn in zip(self.output_names, loss)]

    def _output_shape(self, xa: Any) -> list[int]:
        return list(self.outputs[0].shape)

    def _prepare(self, x: Any, y: Any, loss: Any, what: str) -> tuple[Any, Any]:
        xa = self._features(x, what)
        n = len(xa[0])
        ys = self._by_name(y, self.output_names, "y (one target per output)", True)
        ya = []
        for out, fn, target in zip(self.outputs, loss, ys):
            t = as_target(target, fn.name, self.dtype, n)
            if t.ndim == 1 and fn.name != "cross_entropy" and out.shape == (1,):
                t = t.reshape(-1, 1)
            ya.append(t)
        return xa, ya

    def _sample_weights(self, xa: Any, ya: Any, class_weight: Any, sample_weight: Any) -> Any:
        if class_weight is not None and len(ya) > 1:
            raise ValueError("class_weight is supported for models with one output only")
        return super()._sample_weights(xa, ya[0], class_weight, sample_weight)

    # ------------------------------------------------------------ inference

    def predict(
        self, X: Any, batch_size: int = DEFAULT_EVAL_BATCH, distributed: bool = False
    ) -> np.ndarray | list[np.ndarray]:
        """The model's output for ``X`` (one array per input, see the class)
        in inference mode, computed in batches: one array, or a list in
        output order for several outputs."""
        return self._predict(X, batch_size, distributed)

    def forward(self, x: Any, training: bool | None = None) -> Any:
        """The outputs for ``x`` (one array per input, as a list or a dict
        by input name): one array, or a list in output order for several
        outputs (see :meth:`Sequential.forward`). A training-mode pass is
        kept for :meth:`backward`, which then takes one gradient per output
        (a list, or a dict by output name)."""
        if training is None:
            training = self.training
        xa = self._features(x, "x")
        return self._core.forward(xa if len(xa) > 1 else xa[0], bool(training))

    def backward(self, grad: Any) -> None:
        """Backpropagates the gradients of the loss with respect to the
        outputs of the last training-mode :meth:`forward` (one array, or
        one per output as a list or a dict by output name), adding into
        every parameter's gradient."""
        items = self._by_name(grad, self.output_names, "grad (one per output)", True)
        gs = [np.ascontiguousarray(np.asarray(g), dtype=self.dtype) for g in items]
        self._core.backward(gs if len(gs) > 1 else gs[0])

    # ------------------------------------------------------------ display

    def summary(
        self,
        input_shape: Any = None,
        print_fn: Callable[[str], Any] | None = print,
    ) -> str:
        """A table of the layer calls: name, type, output shape, parameters
        (a shared layer's once) and the calls' inputs; printed with
        ``print_fn`` (``None`` only returns it). ``input_shape`` is unused
        (the inputs' shapes are known)."""
        rows = [("Layer (type)", "Output shape", "Params", "Inputs")]
        for node in self.inputs:
            rows.append((f"{node.name} (Input)", _shape(node.shape), "0", ""))
        counted: set[int] = set()
        for node in self._nodes:
            n = 0 if id(node.layer) in counted else node.layer.num_params()
            counted.add(id(node.layer))
            rows.append(
                (
                    f"{node.name} ({type(node.layer).__name__})",
                    _shape(node.shape),
                    f"{n:,}",
                    ", ".join(x.name for x in node.inputs),
                )
            )
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = "-" * (sum(widths) + 6)
        out = [f'Model "{self.name}" ({self.dtype.name}, seed={self.seed})', line]
        for j, r in enumerate(rows):
            out.append(
                f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()
            )
            if j == 0:
                out.append(line)
        outs = ", ".join(self.output_names)
        out += [line, f"Outputs: {outs}", f"Total params: {self.num_params():,}"]
        text = "\n".join(out)
        if print_fn is not None:
            print_fn(text)
        return text

    def __repr__(self) -> str:
        return (
            f'Model("{self.name}", inputs={self.input_names}, outputs={self.output_names}, '
            f"layers={len(self.layers)}, dtype={self.dtype.name}, params={self.num_params():,})"
        )


def _shape(shape: tuple[int, ...]) -> str:
    return "(N, " + ", ".join(map(str, shape)) + ")"
