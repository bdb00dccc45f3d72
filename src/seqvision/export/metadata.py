"""``model.json``: what a runtime needs to feed the exported graphs and read their outputs, without seqvision.

Each graph's inputs and outputs are listed in the order the graph takes and gives them, with their shapes;
then the task, class names, preprocessing, sampling, the model's options, how the graphs were checked, and
versions. A model trained with ``--temporal-shift`` adds ``temporal_shift`` and ``not_exported`` (the graphs
it has no form of, and why); its ``encoder`` takes whole padded samples, and a causal one has a ``stream``
graph whose ``state`` entry says how to carry its state from frame to frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqvision.export.stream_graph import StreamGraph
from seqvision.inference.predictor import Predictor
from seqvision.models.temporal_shift import is_shifted


def activation(predictor: Predictor) -> str | None:
    """What turns logits into the values ``predict`` reports: softmax, sigmoid (multi-label) or nothing."""
    if not predictor.spec.is_classes:
        return None
    return "sigmoid" if predictor.spec.task == "multilabel" else "softmax"


def output_names(predictor: Predictor) -> list[str]:
    return ["logits", "probabilities"] if predictor.spec.is_classes else ["values"]


def graphs_json(predictor: Predictor, stream: StreamGraph | None) -> dict[str, Any]:
    """model.json's ``graphs``: each graph's inputs and outputs, in order, with their shapes."""
    outputs, features = output_names(predictor), predictor.model.encoder.num_features
    rows = "(B, T, K), rows past a sample's length are 0" if predictor.spec.per_image else "(B, K)"
    graphs: dict[str, Any] = {
        "model": {"inputs": {"images": "(B, T, 3, S, S) float32, zero-padded", "lengths": "(B,) int64"},
                  "outputs": {o: rows for o in outputs}},
        "encoder": {"inputs": {"images": "(N, 3, S, S) float32"}, "outputs": {"features": f"(N, {features})"}},
        "sequence": {"inputs": {"features": f"(B, T, {features}) float32, zero-padded", "lengths": "(B,) int64"},
                     "outputs": {o: rows for o in outputs}},
    }
    if is_shifted(predictor.model.encoder):  # the CNN reads each image's neighbours: whole samples in
        graphs["encoder"] = {"inputs": graphs["model"]["inputs"],
                             "outputs": {"features": f"(B, T, {features}), rows past a sample's length are 0"}}
    if stream is not None:
        state = stream.state_shapes()
        graphs["stream"] = {
            "inputs": {"image": "(B, 3, S, S) float32, one frame of each of B sequences", **state},
            "outputs": {**{o: "(B, K), after this frame" for o in outputs}, **{k.replace("_in", "_out", 1): v for k, v in state.items()}},
            "state": "every *_in is zeros at a sequence's first frame (zero a sample's rows to restart it); feed each *_out "
                     "back as the *_in of the same name. shift_in_i: the i-th shifted convolution's first C/8 input channels "
                     "at the previous frame; h, c: the LSTM/GRU state; first: its output at the first frame; previous: the "
                     "previous frame's features; started: 1 after the first frame; total, count, maximum: running statistics",
        }
    return graphs


def model_json(
    predictor: Predictor, *, files: dict[str, Path], checked: dict[str, Any], format: str, opset: int,
    stream: StreamGraph | None = None, not_exported: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything a runtime needs to feed the graphs and read their outputs (``model.json``). ``files``: graph
    name -> file; ``checked``: how each graph was checked and its largest difference; ``not_exported``: graphs
    a shifted model has no form of, and why (a model without a shift gets the model.json it always had)."""
    import seqvision

    cfg, spec, prep = predictor.cfg, predictor.spec, predictor.preprocessing
    d = cfg.data
    shift = getattr(predictor.model.encoder, "shift_state", None)
    extra: dict[str, Any] = {}
    if shift is not None:  # only then: a model without a shift keeps the model.json it always had
        extra = {"temporal_shift": shift.mode, "not_exported": dict(not_exported or {})}
    return {
        "format": format,
        "opset": opset if format == "onnx" else None,
        "files": {name: path.name for name, path in files.items()},
        "graphs": graphs_json(predictor, stream),
        "task": spec.task,
        "per_image": spec.per_image,
        "names": list(spec.class_names or spec.target_names),
        "thresholds": predictor.thresholds if spec.task == "multilabel" else None,
        "preprocessing": {
            **prep.to_dict(), "interpolation": prep.interpolation, "channels": "RGB",
            "steps": "shorter side resized to resize_size, centre crop image_size x image_size, scaled to [0, 1], "
                     "(x - mean) / std; lengths in [1, T]",
        },
        "sampling": {"num_frames": d.num_frames, "sampling": d.eval_sampling or d.sampling, "stride": d.stride, "fps": d.fps,
                     "clips": d.eval_clips},
        "model": {"backbone": cfg.model.backbone, "head": cfg.model.head, "temporal_diff": cfg.model.temporal_diff,
                  "bidirectional": cfg.model.bidirectional, "pool": cfg.model.pool},
        "checked": checked,
        "versions": {"seqvision": seqvision.__version__, "torch": torch.__version__},
        "source": predictor.source,
        **extra,
    }
