"""``seqvision export``: a checkpoint -> ONNX or TorchScript graphs that run without seqvision, checked
against PyTorch before they are kept, and ``model.json`` describing how to feed and read them.

Three graphs (:mod:`seqvision.export.graphs`): the whole model, the image encoder and the sequence part,
each with a dynamic batch size and a dynamic number of images per sample. Every graph is run on a
padded batch of samples of several lengths (and on a single one-image sample) and compared with the
PyTorch model on each sample ALONE, so padding invariance is checked in the exported graph itself.
The files are written to a temporary folder and moved into ``out`` only once all of them pass; a failed
export leaves what was there before untouched.

A model trained with ``--temporal-shift`` exports too (its CNN reads each image's neighbours): ``model``
shifts along T inside each padded sample and ``encoder`` takes whole samples,
``images (B, T, 3, S, S), lengths (B,) -> features (B, T, F)`` (see :mod:`.graphs`), both checked like the
rest. A causal shift adds a fourth graph, ``stream``: one frame in, with each shifted convolution's slice of
the previous frame and the head's recurrent state as explicit inputs and outputs (:mod:`.stream_graph`); it
is checked by running it frame by frame against the whole model on every prefix. A bidirectional shift
reads the next frame, so it has no stream graph (model.json says why), nor has a head that needs a window.

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
from typing import Any, Callable

import torch
from torch import nn

from seqvision.errors import ConfigError, SeqVisionError, first_line
from seqvision.export.graphs import EncoderGraph, SequenceGraph, ShiftedEncoderGraph, WholeGraph
from seqvision.export.heads import export_form
from seqvision.export.metadata import activation, model_json, output_names
from seqvision.export.stream_graph import StreamGraph, offline_prefixes, step_form, stream_axes
from seqvision.inference.predictor import Predictor
from seqvision.io import atomic_write_text
from seqvision.models.sequence_model import pad_features
from seqvision.models.temporal_shift import frames_of, is_shifted

log = logging.getLogger("seqvision")

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # max |exported - PyTorch| on the outputs, fp32 on both sides
TRACE_LENGTHS = (3, 2)  # the example the graphs are traced on (no 1s: a size-1 dimension may be fixed)
CHECK_LENGTHS = ((4, 1, 3), (1,))  # checked: other lengths and batch sizes than traced, and one image alone
STREAM_TRACE_BATCH = 2  # the stream graph is traced on one frame of 2 sequences (other batch sizes are checked)
STREAM_CHECK = ((3, 5), (1, 2))  # checked frame by frame: (sequences in the batch, frames each)


class ExportError(SeqVisionError):
    """An exported graph that cannot be written, or whose outputs differ from PyTorch's."""


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]  # graph name (model, encoder, sequence; stream for a causal shift) -> file
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
    predictor = copy.copy(predictor)  # exported on a CPU fp32 copy: the caller's Predictor keeps its device
    predictor.model = model = copy.deepcopy(predictor.model).cpu().float().eval()
    head = export_form(model.temporal_head)
    if head is None:
        name = predictor.cfg.model.head
        raise ConfigError(
            f"temporal head {name!r} ({type(model.temporal_head).__name__}) has no export form; the heads that export: "
            "lstm, gru, attention, transformer, mean, max (with or without --temporal-diff)"
        )
    shifted = is_shifted(model.encoder)
    encoder = (ShiftedEncoderGraph(model) if shifted else EncoderGraph(model)).eval()
    sequence = SequenceGraph(model, head, activation(predictor)).eval()
    graphs = {"model": WholeGraph(encoder, sequence).eval(), "encoder": encoder, "sequence": sequence}
    stream, not_exported = stream_graph(predictor)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        files, diffs = {}, {}
        for name, graph in graphs.items():
            path = Path(tmp) / f"{name}{SUFFIX[format]}"
            outputs = ["features"] if name == "encoder" else output_names(predictor)
            inputs = input_names(name, shifted=shifted)
            write_graph(graph, example_inputs(name, predictor, TRACE_LENGTHS), path, name=name, format=format, opset=opset,
                        inputs=inputs, outputs=outputs, axes=graph_axes(name, inputs, outputs, shifted=shifted, per_step=model.per_step))
            diffs[name] = check_graph(path, name, predictor, format)
            files[name] = path
        if stream is not None:
            files["stream"] = path = Path(tmp) / f"stream{SUFFIX[format]}"
            diffs["stream"] = write_stream(stream, path, predictor, format=format, opset=opset)
        result = ExportResult(out, {n: out / p.name for n, p in files.items()}, diffs)
        checked: dict[str, Any] = {"max_abs_diff": diffs, "tolerance": TOLERANCE, "lengths": [list(x) for x in CHECK_LENGTHS]}
        if stream is not None:  # run frame by frame against the whole model on every prefix
            checked["stream_sequences_frames"] = [list(x) for x in STREAM_CHECK]
        result.metadata = model_json(predictor, files=result.files, checked=checked, format=format, opset=opset,
                                     stream=stream, not_exported=not_exported)
        atomic_write_text(Path(tmp) / "model.json", json.dumps(result.metadata, indent=1))
        for path in sorted(Path(tmp).iterdir(), key=lambda p: p.name == "model.json"):  # model.json last
            os.replace(path, out / path.name)  # the same file system: each file is replaced whole
    return result


def stream_graph(predictor: Predictor) -> tuple[StreamGraph | None, dict[str, str]]:
    """The ``stream`` graph of a causal-shift model, or None and why (for model.json) when a shifted model has
    none; None and nothing to say for a model without a shift (it streams with ``seqvision stream``)."""
    model = predictor.model
    state = getattr(model.encoder, "shift_state", None)
    if state is None:
        return None, {}
    if state.mode != "causal":
        return None, {"stream": f"--temporal-shift {state.mode} reads the next frame, which a stream does not have yet: "
                                "only a model trained with --temporal-shift causal streams"}
    step = step_form(model.temporal_head, per_step=model.per_step, features=model.encoder.num_features)
    if step is None:
        return None, {"stream": f"the {predictor.cfg.model.head} head reads a window of frames, not a carried state: "
                                "run the model graph on the last frames (a unidirectional lstm or gru, mean or max streams)"}
    graph = StreamGraph(model, step, activation=activation(predictor), outputs=output_names(predictor)).eval()
    return graph, {}


def write_stream(graph: StreamGraph, path: Path, predictor: Predictor, *, format: str, opset: int) -> float:
    """Trace the stream graph on one frame of :data:`STREAM_TRACE_BATCH` sequences from their start (zero state),
    write it to ``path`` and check it (:func:`check_stream`); its largest difference."""
    example = (example_images(predictor, (1,) * STREAM_TRACE_BATCH), *graph.initial_state(STREAM_TRACE_BATCH))  # (B, 3, S, S), ...
    write_graph(graph, example, path, name="stream", format=format, opset=opset, inputs=graph.input_names(),
                outputs=graph.output_names(), axes=stream_axes(graph))
    return check_stream(path, graph, predictor, format)


def input_names(name: str, *, shifted: bool = False) -> list[str]:
    """The inputs of graph ``name``; a shifted encoder takes whole padded samples."""
    if name == "encoder" and shifted:
        return ["images", "lengths"]
    return {"model": ["images", "lengths"], "encoder": ["images"], "sequence": ["features", "lengths"]}[name]


def graph_axes(name: str, inputs: list[str], outputs: list[str], *, shifted: bool, per_step: bool) -> dict[str, dict[int, str]]:
    """ONNX dynamic axes of the three graphs: the batch, the images per sample, or the images of an encoder."""
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in inputs}
    if name == "encoder" and not shifted:
        return {"images": {0: "images"}, **{o: {0: "images"} for o in outputs}}
    axes[inputs[0]] = {0: "batch", 1: "steps"}
    for o in outputs:
        axes[o] = {0: "batch", 1: "steps"} if per_step or name == "encoder" else {0: "batch"}
    return axes


def example_images(predictor: Predictor, lengths: tuple[int, ...], *, seed: int = 0) -> torch.Tensor:
    """``(sum(lengths), 3, S, S)`` random normalized images, sample after sample."""
    size = predictor.preprocessing.image_size
    return torch.randn(sum(lengths), 3, size, size, generator=torch.Generator().manual_seed(seed))


def example_inputs(name: str, predictor: Predictor, lengths: tuple[int, ...], *, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of graph ``name`` for samples of ``lengths`` images: random normalized images (or the
    features the PyTorch encoder gives them), zero-padded to the longest. A shifted encoder's are the
    model's: whole padded samples."""
    flat = example_images(predictor, lengths, seed=seed)  # (N, 3, S, S)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    encoder = predictor.model.encoder
    if name == "encoder" and not is_shifted(encoder):
        return (flat,)
    if name in ("model", "encoder"):
        per_sample = flat.split(list(lengths))
        return nn.utils.rnn.pad_sequence(per_sample, batch_first=True), lengths_t  # (B, T, 3, S, S)
    with torch.no_grad(), frames_of(encoder, lengths_t):  # a shifted CNN learns where the samples lie
        features = encoder(flat).split(list(lengths))
    return nn.utils.rnn.pad_sequence(features, batch_first=True), lengths_t  # (B, T, F)


def write_graph(
    graph: nn.Module, example: tuple[torch.Tensor, ...], path: Path, *, name: str, format: str, opset: int, inputs: list[str],
    outputs: list[str], axes: dict[str, dict[int, str]],
) -> None:
    """Trace ``graph`` on ``example`` and write it to ``path``; :class:`ExportError` naming the graph when it cannot be."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices: checked after
            if format == "torchscript":
                torch.jit.save(torch.jit.trace(graph, example, check_trace=False), str(path))
                return
            torch.onnx.export(
                graph, example, str(path), dynamo=False, opset_version=opset, input_names=inputs, output_names=outputs,
                dynamic_axes=axes,
            )
    except Exception as exc:  # noqa: BLE001 - an operation the exporter lacks: say which graph
        raise ExportError(f"could not export the {name} graph to {format}: {first_line(exc, 400)}") from None


def load_graph(path: Path, format: str) -> Callable[[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
    """Load an exported graph file the way a user without seqvision would (ONNX Runtime or ``torch.jit.load``):
    a function from its inputs, in order, to its outputs."""
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still what TorchScript users load
            module = torch.jit.load(str(path))

        def run_script(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
            with torch.no_grad():
                out = module(*inputs)
            return [o.float() for o in (out if isinstance(out, tuple) else (out,))]

        return run_script
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run_onnx(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return [torch.from_numpy(o) for o in session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})]

    return run_onnx


def run_graph(path: Path, format: str, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Run an exported graph file once (see :func:`load_graph`)."""
    return load_graph(path, format)(inputs)


def reference(name: str, predictor: Predictor, lengths: tuple[int, ...]) -> list[torch.Tensor]:
    """What PyTorch gives for the example of ``lengths``: features, or the outputs of each sample run ALONE
    through the live model (so the exported batch must be padding-invariant to match). A shifted
    encoder's features: each sample alone, zero-padded ``(B, T, F)`` as its graph gives them."""
    model = predictor.model
    flat = example_images(predictor, lengths)  # (N, 3, S, S): the real images of the example
    with torch.no_grad():
        if name == "encoder" and is_shifted(model.encoder):
            alone = []
            for images, n in zip(flat.split(list(lengths)), lengths):
                with frames_of(model.encoder, torch.tensor([n])):
                    alone.append(model.encoder(images))  # (n, F)
            return [pad_features(torch.cat(alone), torch.tensor(lengths))]
        if name == "encoder":
            return [model.encoder(flat)]
        logits = [model(images, torch.tensor([n])) for images, n in zip(flat.split(list(lengths)), lengths)]
    return [torch.cat(logits)] + ([torch.cat([values(x) for x in logits])] if (values := activated(predictor)) else [])


def activated(predictor: Predictor):
    """The function from logits to the values ``predict`` reports (softmax or sigmoid); None for regression."""
    return {"softmax": lambda x: x.softmax(-1), "sigmoid": torch.sigmoid}.get(activation(predictor))


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


def check_stream(path: Path, graph: StreamGraph, predictor: Predictor, format: str) -> float:
    """The exported stream graph run frame by frame, its state outputs fed back as inputs, against the whole
    live model on every prefix of each sequence (:data:`STREAM_CHECK`: other batch sizes than traced); the
    largest difference, :class:`ExportError` above :data:`TOLERANCE`."""
    run, values = load_graph(path, format), activated(predictor)
    worst, n = 0.0, len(graph.outputs)
    for batch, frames in STREAM_CHECK:
        images = example_images(predictor, (frames,) * batch, seed=batch).unflatten(0, (batch, frames))  # (B, T, 3, S, S)
        logits = torch.stack([offline_prefixes(predictor.model, x) for x in images], dim=1)  # (T, B, K)
        state = graph.initial_state(batch)  # zeros: a sequence's start
        for t in range(frames):
            try:
                got = run((images[:, t], *state))
            except Exception as exc:  # noqa: BLE001 - a size fixed at tracing, or worse
                raise ExportError(f"the exported stream graph ({format}) fails at frame {t} of {batch} sequences: "
                                  f"{first_line(exc, 300)}; nothing was written") from None
            outputs, state = got[:n], got[n:]
            expected = [logits[t]] + ([values(logits[t])] if values else [])
            worst = max(worst, *(float((g - e).abs().max()) for g, e in zip(outputs, expected)))
    if not worst <= TOLERANCE:  # also NaN
        raise ExportError(
            f"the exported stream graph ({format}) differs from the whole model on a prefix by {worst:.2e} (> {TOLERANCE:g}), "
            f"frame by frame on {STREAM_CHECK} (sequences, frames); nothing was written"
        )
    return worst


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
