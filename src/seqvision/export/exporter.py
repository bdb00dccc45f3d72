"""``seqvision export``: a checkpoint -> ONNX or TorchScript graphs that run without seqvision, checked
against PyTorch before they are kept, and ``model.json`` describing how to feed and read them.

Three graphs (:mod:`seqvision.export.graphs`): the whole model, the image encoder and the sequence part,
each with a dynamic batch size and a dynamic number of images per sample. Every graph is run on a
padded batch of samples of several lengths (and on a single one-image sample) and compared with the
PyTorch model on each sample ALONE, so padding invariance is checked in the exported graph itself.
The files are written to a temporary folder and moved into ``out`` only once all of them pass; a failed
export leaves what was there before untouched.

ONNX uses torch's TorchScript-based exporter: with torch 2.14 the newer ``torch.export``-based one fixes
the number of steps of a recurrent layer to the traced example (measured), which a variable-length model
cannot accept. TorchScript graphs are traced (``torch.jit.trace``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqvision.errors import ConfigError, SeqVisionError, first_line
from seqvision.export.graphs import EncoderGraph, SequenceGraph, WholeGraph
from seqvision.export.heads import export_form
from seqvision.inference.predictor import Predictor
from seqvision.io import atomic_write_text
from seqvision.models.temporal_shift import refuse_shift

log = logging.getLogger("seqvision")

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # max |exported - PyTorch| on the outputs, fp32 on both sides
TRACE_LENGTHS = (3, 2)  # the example the graphs are traced on (no 1s: a size-1 dimension may be fixed)
CHECK_LENGTHS = ((4, 1, 3), (1,))  # checked: other lengths and batch sizes than traced, and one image alone


class ExportError(SeqVisionError):
    """An exported graph that cannot be written, or whose outputs differ from PyTorch's."""


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]  # graph name (model, encoder, sequence) -> file
    max_diff: dict[str, float] = field(default_factory=dict)  # graph name -> max |exported - PyTorch|
    metadata: dict[str, Any] = field(default_factory=dict)  # what model.json holds


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, format: str = "onnx", opset: int = 17) -> ExportResult:
    """Export a ``seqvision train`` checkpoint to ``out`` (see the module docstring)."""
    check_format(format, opset)
    predictor = Predictor.load(checkpoint, device="cpu", precision="32")
    return export_predictor(predictor, out, format=format, opset=opset)


def check_format(format: str, opset: int = 17) -> None:
    """Refuse an unknown format, an opset the exporter lacks, or a missing ONNX package, before any work."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: use {' or '.join(FORMATS)}")
    if format == "onnx":
        if not 14 <= opset <= 20:
            raise ConfigError(f"--opset {opset}: use an ONNX opset from 14 to 20 (default 17)")
        missing = [m for m in ("onnx", "onnxruntime") if not _importable(m)]
        if missing:
            raise ConfigError(f"ONNX export needs {' and '.join(missing)}: pip install \"seqvision[export]\"")


def export_predictor(predictor: Predictor, out: str | Path, *, format: str = "onnx", opset: int = 17) -> ExportResult:
    """Export the model a :class:`Predictor` holds (on the CPU, fp32) to ``out``."""
    check_format(format, opset)
    refuse_shift(predictor.model.encoder, "export")
    predictor = copy.copy(predictor)  # exported on a CPU fp32 copy: the caller's Predictor keeps its device
    predictor.model = model = copy.deepcopy(predictor.model).cpu().float().eval()
    head = export_form(model.temporal_head)
    if head is None:
        name = predictor.cfg.model.head
        raise ConfigError(
            f"temporal head {name!r} ({type(model.temporal_head).__name__}) has no export form; the heads that export: "
            "lstm, gru, attention, transformer, mean, max (with or without --temporal-diff)"
        )
    encoder = EncoderGraph(model).eval()
    sequence = SequenceGraph(model, head, activation(predictor)).eval()
    graphs = {"model": WholeGraph(encoder, sequence).eval(), "encoder": encoder, "sequence": sequence}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        files, diffs = {}, {}
        for name, graph in graphs.items():
            path = Path(tmp) / f"{name}{SUFFIX[format]}"
            inputs = example_inputs(name, predictor, TRACE_LENGTHS)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices: checked below
                write_graph(graph, inputs, path, name=name, format=format, opset=opset, per_step=model.per_step,
                            outputs=["features"] if name == "encoder" else output_names(predictor))
            diffs[name] = check_graph(path, name, predictor, format)
            files[name] = path
        result = ExportResult(out, {n: out / p.name for n, p in files.items()}, diffs)
        result.metadata = model_json(predictor, result, format=format, opset=opset)
        atomic_write_text(Path(tmp) / "model.json", json.dumps(result.metadata, indent=1))
        for path in sorted(Path(tmp).iterdir(), key=lambda p: p.name == "model.json"):  # model.json last
            os.replace(path, out / path.name)  # the same file system: each file is replaced whole
    return result


def activation(predictor: Predictor) -> str | None:
    """What turns logits into the values ``predict`` reports: softmax, sigmoid (multi-label) or nothing."""
    if not predictor.spec.is_classes:
        return None
    return "sigmoid" if predictor.spec.task == "multilabel" else "softmax"


def output_names(predictor: Predictor) -> list[str]:
    return ["logits", "probabilities"] if predictor.spec.is_classes else ["values"]


def input_names(name: str) -> list[str]:
    return {"model": ["images", "lengths"], "encoder": ["images"], "sequence": ["features", "lengths"]}[name]


def example_inputs(name: str, predictor: Predictor, lengths: tuple[int, ...], *, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of graph ``name`` for samples of ``lengths`` images: random normalized images (or the
    features the PyTorch encoder gives them), zero-padded to the longest."""
    size = predictor.preprocessing.image_size
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randn(sum(lengths), 3, size, size, generator=generator)  # (N, 3, S, S)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    if name == "encoder":
        return (flat,)
    if name == "model":
        per_sample = flat.split(list(lengths))
        return nn.utils.rnn.pad_sequence(per_sample, batch_first=True), lengths_t  # (B, T, 3, S, S)
    with torch.no_grad():
        features = predictor.model.encoder(flat).split(list(lengths))
    return nn.utils.rnn.pad_sequence(features, batch_first=True), lengths_t  # (B, T, F)


def write_graph(
    graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, *, name: str, format: str, opset: int, per_step: bool,
    outputs: list[str],
) -> None:
    try:
        if format == "torchscript":
            torch.jit.save(torch.jit.trace(graph, inputs, check_trace=False), str(path))
            return
        names = input_names(name)
        axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in names}
        if name == "encoder":
            axes["images"] = {0: "images"}
        else:
            axes[names[0]] = {0: "batch", 1: "steps"}
        for o in outputs:
            axes[o] = {0: "images"} if name == "encoder" else ({0: "batch", 1: "steps"} if per_step else {0: "batch"})
        torch.onnx.export(
            graph, inputs, str(path), dynamo=False, opset_version=opset, input_names=names, output_names=outputs,
            dynamic_axes=axes,
        )
    except Exception as exc:  # noqa: BLE001 - an operation the exporter lacks: say which graph
        raise ExportError(f"could not export the {name} graph to {format}: {first_line(exc, 400)}") from None


def run_graph(path: Path, format: str, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Run an exported graph file the way a user without seqvision would: ONNX Runtime or ``torch.jit.load``."""
    if format == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still what TorchScript users load
            out = torch.jit.load(str(path))(*inputs)
        return [o.float() for o in (out if isinstance(out, tuple) else (out,))]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feed)]


def reference(name: str, predictor: Predictor, lengths: tuple[int, ...]) -> list[torch.Tensor]:
    """What PyTorch gives for the example of ``lengths``: features, or the outputs of each sample run ALONE
    through the live model (so the exported batch must be padding-invariant to match)."""
    model = predictor.model
    flat = example_inputs("encoder", predictor, lengths)[0]
    with torch.no_grad():
        if name == "encoder":
            return [model.encoder(flat)]
        logits = [model(images, torch.tensor([n])) for images, n in zip(flat.split(list(lengths)), lengths)]
    kind = activation(predictor)
    values = {"softmax": lambda x: x.softmax(-1), "sigmoid": torch.sigmoid}.get(kind)
    return [torch.cat(logits)] + ([torch.cat([values(x) for x in logits])] if values else [])


def check_graph(path: Path, name: str, predictor: Predictor, format: str) -> float:
    """The largest difference between the exported graph and PyTorch over :data:`CHECK_LENGTHS`;
    :class:`ExportError` above :data:`TOLERANCE`."""
    worst = 0.0
    for lengths in CHECK_LENGTHS:
        try:
            got = run_graph(path, format, example_inputs(name, predictor, lengths))
        except Exception as exc:  # noqa: BLE001 - the graph fixed a size it should have kept dynamic, or worse
            raise ExportError(
                f"the exported {name} graph ({format}) fails on samples of lengths {lengths}: {first_line(exc, 300)}; "
                "nothing was written"
            ) from None
        expected = reference(name, predictor, lengths)
        for g, e in zip(got, expected):
            if name != "encoder" and predictor.model.per_step:  # (B, T, K): the real rows, sample after sample
                g = torch.cat([g[b, :n] for b, n in enumerate(lengths)])
            worst = max(worst, float((g - e).abs().max()))
    if not worst <= TOLERANCE:  # also NaN
        raise ExportError(
            f"the exported {name} graph ({format}) differs from PyTorch by {worst:.2e} (> {TOLERANCE:g}) on samples of "
            f"lengths {CHECK_LENGTHS}; nothing was written"
        )
    return worst


def model_json(predictor: Predictor, result: ExportResult, *, format: str, opset: int) -> dict[str, Any]:
    """Everything a runtime needs to feed the graphs and read their outputs (``model.json``)."""
    import seqvision

    cfg, spec, prep = predictor.cfg, predictor.spec, predictor.preprocessing
    d = cfg.data
    outputs = output_names(predictor)
    rows = "(B, T, K), rows past a sample's length are 0" if spec.per_image else "(B, K)"
    return {
        "format": format,
        "opset": opset if format == "onnx" else None,
        "files": {name: path.name for name, path in result.files.items()},
        "graphs": {
            "model": {"inputs": {"images": "(B, T, 3, S, S) float32, zero-padded", "lengths": "(B,) int64"},
                      "outputs": {o: rows for o in outputs}},
            "encoder": {"inputs": {"images": "(N, 3, S, S) float32"}, "outputs": {"features": f"(N, {predictor.model.encoder.num_features})"}},
            "sequence": {"inputs": {"features": f"(B, T, {predictor.model.encoder.num_features}) float32, zero-padded", "lengths": "(B,) int64"},
                         "outputs": {o: rows for o in outputs}},
        },
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
        "checked": {"max_abs_diff": result.max_diff, "tolerance": TOLERANCE, "lengths": [list(x) for x in CHECK_LENGTHS]},
        "versions": {"seqvision": seqvision.__version__, "torch": torch.__version__},
        "source": predictor.source,
    }


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
