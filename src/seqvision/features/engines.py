"""The frozen CNN's forward run by another inference runtime than torch: ONNX Runtime or OpenVINO.

Both read the same ONNX file: the encoder's trunk and pooling (``images (N, 3, S, S)`` normalized float32
-> ``features (N, F)``, dynamic N), exported once with torch's TorchScript-based exporter and kept in
``<cache root>/.runtimes/onnx/``, named by a hash of what the graph depends on (weights fingerprint,
backbone, pooling, image size, precision, opset, exporter version); the
:data:`KEEP_FILES` most recently used are kept. An engine wraps a
compiled session in an ``nn.Module`` whose ``__call__(images)`` returns torch features, so every caller
of :func:`~seqvision.features.encode.prepare_encoder` uses it as it would the encoder.

Which runtime runs is decided in :mod:`seqvision.features.runtimes`; this module only builds them.
Both compute in fp32: OpenVINO is told so explicitly (it would pick bf16 by itself on AMX CPUs, and a
cache records the precision its vectors were computed in).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqvision.errors import ConfigError, first_line
from seqvision.io import atomic_write

OPSET = 17  # what `seqvision export` writes by default; every op of the torchvision trunks has it
# ONNX files kept: each fine-tuned checkpoint (or --weights none run) has weights of its own, and so a
# file of its own (15-100 MB); the least recently used beyond this many are removed when one is added
KEEP_FILES = 16
PROBE_COSINE = 0.9999  # an engine whose probe features are further from torch's is not used


def package_version(package: str) -> str:
    """The installed version of ``package`` (``""`` when it is not installed)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


class TrunkAndPool(nn.Module):
    """``images (N, 3, S, S) -> features (N, F)``: the encoder's trunk and pooling, without chunking.
    The same graph as ``seqvision.export.graphs.EncoderGraph`` (which the layers keep out of reach here)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (N, 3, S, S) -> (N, F)``."""
        return self.encoder.pool_features(self.encoder.trunk(images))


def onnx_file(encoder: nn.Module, folder: Path, *, opset: int = OPSET) -> Path:
    """The encoder's ONNX file in ``folder``, exported on first use (written whole or not at all).

    The name hashes everything the file's content depends on, so other weights, another image size,
    opset or exporter (torch) version get their own file and a stale one is never read. Which runtime
    reads it does not change it: ONNX Runtime and OpenVINO share one file (one export per probe)."""
    from seqvision.features.cache import weights_fingerprint
    from seqvision.models.backbones import network_name

    size = encoder.preprocessing.image_size
    key = {"backbone": network_name(encoder), "pool": encoder.pool, "weights": weights_fingerprint(encoder), "image_size": size,
           "precision": "float32", "opset": opset, "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(folder) / f"{encoder.name.replace('/', '_')}-{size}px-{digest}.onnx"
    if path.is_file():
        with contextlib.suppress(OSError):  # a read-only cache is still read
            path.touch()  # recently used: kept by the pruning below
        return path
    graph = TrunkAndPool(encoder).eval()
    example = torch.zeros(2, 3, size, size)  # (N, 3, S, S); N stays dynamic
    was = next(encoder.parameters()).device

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
            torch.onnx.export(graph, (example,), str(tmp), dynamo=False, opset_version=opset, input_names=["images"],
                              output_names=["features"], dynamic_axes={"images": {0: "images"}, "features": {0: "images"}})

    encoder.cpu()
    try:
        atomic_write(path, write)
    finally:
        encoder.to(was)
    _prune(Path(folder), keep=path)
    return path


def _prune(folder: Path, *, keep: Path) -> None:
    """Remove the least recently used ONNX files beyond :data:`KEEP_FILES` (never ``keep``)."""
    files = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP_FILES:]:
        if old != keep:
            old.unlink(missing_ok=True)  # another process may have removed it already


class EngineEncoder(nn.Module):
    """An encoder's forward run by an ONNX-reading runtime; ``eager`` is the torch encoder it stands for
    (its parameters tell callers the device, its ``chunk_size`` bounds each call's memory).

    A probe batch at construction compares the engine's features with torch's; an engine that fails
    on it or differs (cosine below :data:`PROBE_COSINE`) raises :class:`ConfigError`, so nothing can
    fill a cache with wrong vectors. A failure later raises too (no silent switch to torch: the cache
    key names this runtime)."""

    runtime = "?"

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.eager = encoder

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` float32 -> ``(N, F)`` float32, in chunks of the encoder's ``chunk_size`` if set."""
        if images.device.type != "cpu" or images.dtype != torch.float32:
            raise ConfigError(f"the {self.runtime} runtime takes float32 images on the CPU; got {images.dtype} on {images.device}")
        if not images.shape[0]:
            return images.new_zeros((0, self.eager.num_features))  # (0, F): a batch of no image
        size = self.eager.chunk_size or images.shape[0]
        parts = [torch.from_numpy(self._run(chunk.contiguous().numpy())) for chunk in images.split(size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @torch.no_grad()
    def check(self) -> "EngineEncoder":
        """Compare with torch on a probe batch (see the class docstring); returns ``self``."""
        size = self.eager.preprocessing.image_size
        probe = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (3, 3, S, S)
        want = self.eager(probe).float()
        try:
            got = self(probe)
        except Exception as exc:  # noqa: BLE001 - any runtime failure: named in one line
            raise ConfigError(f"the {self.runtime} runtime fails on backbone {self.eager.name!r} ({first_line(exc)}); use --runtime torch") from None
        cosine = float(nn.functional.cosine_similarity(got, want, dim=-1).min()) if got.shape == want.shape else float("nan")
        if not (torch.isfinite(got).all() and cosine >= PROBE_COSINE):
            raise ConfigError(f"the {self.runtime} runtime's features of backbone {self.eager.name!r} differ from torch's "
                              f"(cosine {cosine:.6f}); use --runtime torch")
        return self


def ort_session(path: Path, *, threads: int, spinning: bool = True):
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads. ``spinning`` False: its
    idle threads sleep at once instead of spinning for the next op or run. Spinning saves a wake-up per op
    (a one-image call's latency), but where other work of this process shares the cores (extraction's
    decoding threads) a spinning thread holds a core that work needs: ``perf`` on an extraction found ORT's
    spin loop taking ~10 % of the CPU on 2 cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one graph at a time: every thread goes to its convolutions
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings about unused initializers say nothing to a user
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxRuntimeEncoder(EngineEncoder):
    """ONNX Runtime's CPU execution provider, one session, intra-op threads = torch's thread count
    (``spinning``: see :func:`ort_session`)."""

    runtime = "onnxruntime"

    def __init__(self, encoder: nn.Module, path: Path, *, threads: int, spinning: bool = True) -> None:
        super().__init__(encoder)
        self.session = ort_session(path, threads=threads, spinning=spinning)

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": images})[0]  # (n, F)


class OpenVinoEncoder(EngineEncoder):
    """OpenVINO's CPU plugin on the same ONNX file, in f32 (never its automatic bf16) with ``hint``."""

    runtime = "openvino"

    def __init__(self, encoder: nn.Module, path: Path, *, threads: int, hint: str = "LATENCY") -> None:
        super().__init__(encoder)
        import openvino as ov

        config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def _run(self, images: np.ndarray) -> np.ndarray:
        self.request.infer({0: images})
        return self.request.get_output_tensor(0).data.copy()  # (n, F); the request reuses its buffer
