"""Export a trained model to ONNX or TorchScript graphs that run without seqvision (``seqvision export``)."""
