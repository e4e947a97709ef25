"""Type stubs for the compiled engine (private; use the public modules)."""

import os
from typing import Any, Callable, final

import numpy as np
from typing_extensions import Self

__all__ = [
    "InternalError",
    "Model",
    "NonFiniteError",
    "Optimizer",
    "ShapeError",
    "StateError",
    "check_clip",
    "check_layer",
    "check_loss",
    "class_weights",
    "dumps_safetensors",
    "clip_coef",
    "get_memory_limit",
    "get_num_threads",
    "layer_info",
    "layer_types",
    "loads_safetensors",
    "loss_value",
    "memory_available",
    "read_safetensors",
    "reduce_grads",
    "set_memory_limit",
    "set_num_threads",
    "write_safetensors",
]

class ShapeError(ValueError): ...
class NonFiniteError(ValueError): ...
class StateError(ValueError): ...
class InternalError(RuntimeError): ...

# One array, or a list of them (one per input or output of a graph).
_Arrays = np.ndarray | list[np.ndarray]

@final
class Model:
    def __new__(
        cls,
        specs: list[str],
        dtype: str = "float32",
        seed: int = 0,
        init: bool = True,
        graph: str | None = None,
    ) -> Self: ...
    def graph_json(self) -> str: ...
    def node_shapes(self, inputs: list[list[int]]) -> list[list[int]]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def num_params(self) -> int: ...
    def param_info(self) -> list[tuple[str, list[int]]]: ...
    def state_info(self) -> list[tuple[str, list[int], str]]: ...
    def get_param(self, i: int) -> np.ndarray: ...
    def get_grad(self, i: int) -> np.ndarray: ...
    def get_state(self, i: int) -> np.ndarray: ...
    def load_state(self, items: list[tuple[str, np.ndarray]]) -> None: ...
    def zero_grad(self) -> None: ...
    def layer_shapes(self, input: list[int]) -> list[list[int]]: ...
    def forward(
        self, x: np.ndarray | list[np.ndarray], training: bool
    ) -> np.ndarray | list[np.ndarray]: ...
    def backward(self, grad: np.ndarray | list[np.ndarray]) -> None: ...
    def predict(self, x: _Arrays, batch_size: int) -> np.ndarray | list[np.ndarray]: ...
    def evaluate(
        self,
        x: _Arrays,
        y: _Arrays,
        loss: str,
        batch_size: int,
        sample_weight: np.ndarray | None = None,
        loss_weights: list[float] | None = None,
    ) -> tuple[float, float | None, list[tuple[float, float | None]]]: ...
    def evaluate_totals(
        self,
        x: np.ndarray,
        y: np.ndarray,
        loss: str,
        batch_size: int,
        sample_weight: np.ndarray | None = None,
    ) -> tuple[float, float, int, int]: ...
    def validate(
        self,
        x: _Arrays,
        y: _Arrays,
        loss: str,
        sample_weight: np.ndarray | None = None,
        loss_weights: list[float] | None = None,
    ) -> None: ...
    def train_epoch(
        self,
        x: _Arrays,
        y: _Arrays,
        loss: str,
        optimizer: Optimizer,
        *,
        batch_size: int,
        shuffle: bool,
        epoch: int,
        check: bool = True,
        callback: Callable[[int, int, int, float, float | None], Any] | None = None,
        lrs: list[float] | None = None,
        momenta: list[float] | None = None,
        every_step: bool = False,
        sample_weight: np.ndarray | None = None,
        clip: tuple[float, float] | None = None,
        diagnostics: bool = False,
        loss_weights: list[float] | None = None,
        parallel: tuple[str, int, int, int] | None = None,
        reduce: Callable[[memoryview], Any] | None = None,
    ) -> tuple[
        float, float | None, tuple[float, float, int, int], list[tuple[float, float | None]]
    ]: ...
    def last_diagnostics(self) -> dict[str, Any] | None: ...
    def diagnose(
        self,
        x: _Arrays,
        y: _Arrays,
        loss: str,
        sample_weight: np.ndarray | None = None,
        loss_weights: list[float] | None = None,
    ) -> dict[str, Any]: ...
    def grad_norms(self, params: list[int], norm_type: float) -> list[float]: ...
    def scale_grads(self, params: list[int], coef: float) -> None: ...
    def gradcheck(
        self,
        x: _Arrays,
        y: _Arrays,
        loss: str,
        eps: float,
        loss_weights: list[float] | None = None,
    ) -> list[tuple[str, float, float]]: ...
    def get_rng_state(self) -> list[int]: ...
    def set_rng_state(self, s: list[int]) -> None: ...

@final
class Optimizer:
    def __new__(
        cls, model: Model, kind: str, config: dict[str, Any], params: list[int]
    ) -> Self: ...
    def step(self) -> None: ...
    lr: float
    momentum: float
    @property
    def steps(self) -> int: ...
    def reset(self) -> None: ...
    def get_state(self) -> tuple[int, list[list[np.ndarray]]]: ...
    def set_state(self, steps: int, state: list[list[np.ndarray]]) -> None: ...

def check_layer(spec: str) -> None: ...
def layer_types() -> list[tuple[str, list[str]]]: ...
def layer_info(spec: str, input_shape: list[int] | None = None) -> dict[str, Any]: ...
def check_clip(max_norm: float, norm_type: float) -> None: ...
def clip_coef(norms: list[float], max_norm: float, norm_type: float) -> tuple[float, float]: ...
def check_loss(loss: str) -> None: ...
def reduce_grads(model: Model, f: Callable[[memoryview], Any], scale: float) -> None: ...
def class_weights(keys: list[int] | None, values: list[float], classes: int) -> list[float]: ...
def loss_value(
    loss: str,
    out: np.ndarray,
    y: np.ndarray,
    with_grad: bool = True,
    sample_weight: np.ndarray | None = None,
) -> tuple[float, float | None, np.ndarray | None]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def set_memory_limit(limit: str) -> None: ...
def get_memory_limit() -> int | None: ...
def memory_available() -> int | None: ...

_Tensors = list[tuple[str, np.ndarray]]

def read_safetensors(path: str | os.PathLike[str]) -> tuple[_Tensors, dict[str, str]]: ...
def loads_safetensors(data: bytes) -> tuple[_Tensors, dict[str, str]]: ...
def write_safetensors(
    path: str | os.PathLike[str], tensors: _Tensors, metadata: dict[str, str]
) -> None: ...
def dumps_safetensors(tensors: _Tensors, metadata: dict[str, str]) -> bytes: ...
