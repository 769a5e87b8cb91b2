"""The graph IR: a DAG of typed nodes over batched tensors.

Every tensor in a graph has a leading batch dimension that no op mixes; ``Node.shape`` is the shape of one
sample. Parameters are float64 tensors; evaluation casts them to the dtype of the input it is given.
Node kinds and their semantics live in :mod:`veracity.graph.ops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from veracity.graph import ops


class UnsupportedError(ValueError):
    """A network uses something veracity cannot represent; the message says what and where."""


@dataclass(eq=False)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # where it came from (e.g. "ONNX Gemm node 'fc1'"), for messages
    in_shapes: tuple[tuple[int, ...], ...] = ()  # filled in by Graph

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.op}, inputs={list(self.inputs)}, shape={self.shape})"


class Graph:
    """A network: one input node, nodes in topological order, one output node."""

    def __init__(self, nodes: list[Node], input_name: str, output_name: str):
        self.nodes: dict[str, Node] = {}
        for n in nodes:
            if n.name in self.nodes:
                raise ValueError(f"duplicate node name {n.name!r}")
            for i in n.inputs:
                if i not in self.nodes:
                    raise ValueError(f"node {n.name!r} uses {i!r} before it is defined")
            if n.op not in ops.OPS:
                raise UnsupportedError(f"unknown op kind {n.op!r} for node {n.name!r}")
            n.in_shapes = tuple(self.nodes[i].shape for i in n.inputs)
            self.nodes[n.name] = n
        self.input_name = input_name
        self.output_name = output_name
        if self.nodes[input_name].op != "input":
            raise ValueError("the input node must have op 'input'")
        self._prune()
        self._cast_cache: dict[tuple[str, torch.dtype], dict[str, Any]] = {}

    def _prune(self) -> None:
        """Drop nodes the output does not depend on."""
        live = {self.output_name}
        for n in reversed(list(self.nodes.values())):
            if n.name in live:
                live.update(n.inputs)
        live.add(self.input_name)
        self.nodes = {k: v for k, v in self.nodes.items() if k in live}

    # -- structure -----------------------------------------------------------------------------------
    @property
    def input(self) -> Node:
        return self.nodes[self.input_name]

    @property
    def output(self) -> Node:
        return self.nodes[self.output_name]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input.shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.output.shape

    @property
    def n_inputs(self) -> int:
        return self.input.size

    @property
    def n_outputs(self) -> int:
        return self.output.size

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {k: [] for k in self.nodes}
        for n in self.nodes.values():
            for i in n.inputs:
                out[i].append(n.name)
        return out

    def op_counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for n in self.nodes.values():
            c[n.op] = c.get(n.op, 0) + 1
        return c

    def __repr__(self) -> str:
        body = "\n".join(f"  {n!r}" for n in self.nodes.values())
        return f"Graph(input={self.input_name!r}, output={self.output_name!r},\n{body}\n)"

    # -- evaluation ----------------------------------------------------------------------------------
    def params(self, node: Node, dtype: torch.dtype, device: torch.device | str = "cpu") -> dict[str, Any]:
        """The node's parameters with float tensors cast to ``dtype`` on ``device`` (cached)."""
        key = (node.name, dtype, str(device))
        p = self._cast_cache.get(key)
        if p is None:
            p = {
                k: v.to(device=device, dtype=dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                for k, v in node.params.items()
            }
            self._cast_cache[key] = p
        return p

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Values of every node for a batch ``x`` of shape (N, *input_shape) or (N, n_inputs)."""
        x = x.reshape(x.shape[0], *self.input_shape)
        vals: dict[str, torch.Tensor] = {}
        for n in self.nodes.values():
            if n.op == "input":
                vals[n.name] = x
            elif n.op == "const":
                vals[n.name] = self.params(n, x.dtype, x.device)["value"].expand(x.shape[0], *n.shape)
            else:
                vals[n.name] = ops.OPS[n.op].forward(
                    n, self.params(n, x.dtype, x.device), *[vals[i] for i in n.inputs]
                )
        return vals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the network for a batch ``x``; shape (N, *output_shape)."""
        return self.forward_all(x)[self.output_name]

    __call__ = forward
