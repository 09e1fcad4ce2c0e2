"""Embedding images with an exported model: `onnx.py`, onnxruntime alone, no torch (embed, cluster, compare).

Beside `data` in the layers, so the torch-free stages never reach into export or training.
"""
