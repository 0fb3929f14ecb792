"""ONNX export of each graph (backbone, encoder, predictor, decoder, head) + parity check."""

from .exporter import ExportError, export_model

__all__ = ["ExportError", "export_model"]
