"""The graph IR and its importers."""

from veracity.graph.ir import Graph, Node, UnsupportedError
from veracity.graph.onnx_import import OnnxImportError, from_onnx, load_onnx

__all__ = ["Graph", "Node", "OnnxImportError", "UnsupportedError", "from_onnx", "load_onnx"]
