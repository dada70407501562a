"""ONNX export, verification, quantisation and benchmarks. Depends on torch, onnx and onnxruntime only."""
