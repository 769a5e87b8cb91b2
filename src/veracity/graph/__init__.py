"""The graph IR and its importers."""

from veracity.graph.ir import Graph, Node, UnsupportedError
from veracity.graph.onnx_import import OnnxImportError, from_onnx, load_onnx
from veracity.graph.torch_import import from_torch

__all__ = ["Graph", "Node", "OnnxImportError", "UnsupportedError", "from_onnx", "from_torch", "load_onnx"]
