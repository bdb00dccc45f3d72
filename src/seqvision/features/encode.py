"""The CNN's inference fast path, shared by ``extract``, ``predict``/``evaluate`` and cached training.

Eval mode, ``torch.inference_mode``, channels_last (the encoder's own layout), bf16 autocast where the
hardware runs it fast. On CPUs, BatchNorm folded into the convolutions and the weights kept in oneDNN's
own blocked layout (:class:`OneDNNEncoder`) where the backbone allows it; or, with ``compile``,
``torch.compile`` with weight freezing. Both fall back to the eager encoder when they cannot run.
Or another runtime than torch (ONNX Runtime, OpenVINO: :mod:`seqvision.features.runtimes`), for the
frozen CNN's forward only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from pathlib import Path

import torch
from torch import nn

from seqvision.errors import first_line
from seqvision.features.engines import EngineEncoder
from seqvision.features.runtimes import Runtime, build_engine, choose_runtime
from seqvision.models.temporal_shift import is_shifted

log = logging.getLogger("seqvision")


def prepare_encoder(
    encoder: nn.Module, device: torch.device, *, dtype: torch.dtype | None = None, compile: bool = False,
    runtime: Runtime | str = "torch", root: Path | None = None, shares_cores: bool = False,
) -> nn.Module:
    """``encoder`` on ``device`` in eval mode (channels_last, as every ImageEncoder is), for inference in
    ``dtype``, run by ``runtime`` (:mod:`seqvision.features.runtimes`: a resolved :class:`Runtime`, or a
    name, ``auto`` resolved here): ONNX Runtime or OpenVINO give an
    :class:`~seqvision.features.engines.EngineEncoder`; ``dtype`` ``torch.int8``: ONNX Runtime's
    :class:`~seqvision.features.int8.Int8Encoder`, quantized on the images of its first call (any other
    runtime, or a CNN only torch runs, is a :class:`ConfigError`). With torch: with ``compile`` wrapped in
    :class:`CompiledEncoder`; else on a CPU in bf16, in :class:`OneDNNEncoder` where the backbone's layers
    allow it. fp32 stays eager, so fp32 features are exactly the live model's (folding BatchNorm moves
    them by ~1e-6; the gain in fp32 was only 3% here). ``encoder`` itself is not changed beyond eval mode
    and its layout, so a model can go on training it.

    ``root``: the cache root whose ``.runtimes`` folder holds the remembered choices and the ONNX files
    (the run's ``--cache``; default: the feature cache's default root). ``shares_cores``: other work of
    this process runs beside the CNN on the same cores (extraction's decoding), so an engine's idle
    threads sleep instead of spinning (:func:`~seqvision.features.engines.ort_session`)."""
    encoder = encoder.to(device).eval()
    encoder.to(memory_format=torch.channels_last)
    int8 = dtype == torch.int8
    if int8:  # ONNX Runtime, or the one-line reason why not (torch, a shifted CNN): never an fp32 CNN under int8
        runtime = choose_runtime(runtime if isinstance(runtime, str) else runtime.name, encoder, device, dtype, root=root)
    if is_shifted(encoder):  # a temporal shift reads its neighbours through
        return encoder  # the batch's layout, which neither a converted copy nor a compiled graph carries
    if isinstance(runtime, str):
        runtime = choose_runtime(runtime, encoder, device, dtype or torch.float32, root=root)
    if runtime.name != "torch":
        return build_engine(runtime, encoder, root=root, int8=int8, spinning=not shares_cores)
    if compile:
        return CompiledEncoder(encoder)
    if dtype == torch.bfloat16 and device.type == "cpu" and hasattr(encoder, "pool_features"):
        onednn = OneDNNEncoder(encoder, dtype)
        if onednn.usable:
            return onednn
    return encoder


def input_layout(net: nn.Module) -> torch.memory_format:
    """The memory format a :func:`prepare_encoder` result reads batches in without a copy: oneDNN's
    reorder reads contiguous NCHW (a channels_last batch is made contiguous first); eager and compiled
    encoders run channels_last; ONNX Runtime and OpenVINO read contiguous NCHW arrays. Extraction builds its
    batches in it, so each row can be written in place."""
    return torch.contiguous_format if isinstance(net, (OneDNNEncoder, EngineEncoder)) else torch.channels_last


class OneDNNEncoder(nn.Module):
    """CPU inference on a converted copy of an ImageEncoder's trunk: BatchNorm folded into the
    convolutions, the weights reordered once into oneDNN's blocked layout, in ``dtype``.

    Eager autocast re-casts every weight to bf16 and runs BatchNorm as a separate pass at every call;
    the copy does neither (``benchmarks/feature_precision.py`` measures it against eager bf16 and fp32).
    In fp32 the gain was small, so :func:`prepare_encoder` leaves fp32 eager.

    oneDNN tensors support few operations (convolution, BatchNorm, ReLU, pooling, addition: the ResNet
    family), so a probe batch decides at construction: a trunk that fails on it, or whose features
    differ from the eager encoder's (cosine < 0.999), is not used (``usable`` is False). A failure
    later falls back to the eager encoder, said once.
    """

    def __init__(self, encoder: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.eager = encoder
        self.dtype = dtype
        self.trunk: nn.Module | None = None
        self.failed = False
        self.usable = False
        if not torch.backends.mkldnn.is_available() or dtype not in (torch.float32, torch.bfloat16):
            return
        reason = "its features differ from the eager encoder's"
        try:
            # fx prints the traceback of a failing traced call to stderr itself: the probe keeps it quiet
            with contextlib.redirect_stderr(io.StringIO()):
                self.trunk = self._convert(encoder.trunk, dtype)
                self.usable = self._agrees_on_a_probe()
        except Exception as exc:  # noqa: BLE001 - an unsupported layer or op: the eager encoder runs
            reason = first_line(exc)
        if not self.usable:
            self.trunk = None
            log.debug("oneDNN layout not used for backbone %s (%s)", getattr(encoder, "name", "?"), reason)

    @staticmethod
    def _convert(trunk: nn.Module, dtype: torch.dtype) -> nn.Module:
        from torch.fx.experimental.optimization import fuse
        from torch.utils.mkldnn import to_mkldnn

        trunk = copy.deepcopy(trunk).eval().to(memory_format=torch.contiguous_format)
        try:
            trunk = fuse(trunk)  # conv + BatchNorm -> one conv (fx tracing)
        except Exception:  # noqa: BLE001 - not traceable: BatchNorm stays, as a oneDNN layer of its own
            pass
        return to_mkldnn(trunk, dtype)

    @torch.inference_mode()
    def _agrees_on_a_probe(self) -> bool:
        size = self.eager.preprocessing.image_size
        probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
            want = self.eager(probe).float()
        got = self._run(probe).float()
        if got.shape != want.shape or not torch.isfinite(got).all():
            return False
        return bool(nn.functional.cosine_similarity(got, want, dim=-1).min() >= 0.999)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):  # the converted trunk is in self.dtype already
            x = self.trunk(images.contiguous().to_mkldnn(self.dtype)).to_dense()  # (N, C, h, w) in self.dtype
        return self.eager.pool_features(x)  # (N, F)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, F)``, in chunks of the encoder's ``chunk_size`` (bounded memory) if set."""
        if not self.failed and self.trunk is not None:
            try:
                size = self.eager.chunk_size
                if not size or images.shape[0] <= size:
                    return self._run(images)
                return torch.cat([self._run(chunk) for chunk in images.split(size)])
            except Exception as exc:  # noqa: BLE001 - e.g. an image size the probe did not see
                self.failed = True
                log.warning("the oneDNN CPU path failed (%s); running the encoder eagerly", first_line(exc))
        return self.eager(images)


class CompiledEncoder(nn.Module):
    """``torch.compile`` of an inference-only encoder, with a safety net.

    Inductor's ``freezing`` treats the weights as constants, so BatchNorm folds into the convolutions,
    after a compile of several seconds (``benchmarks/extract_speed.py`` times it against eager).
    A compiler failure (no C++ compiler, an unsupported op) is reported once and the eager encoder
    runs instead: compiling is an optimisation, never a reason for a run to fail.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        if not torch.cuda.is_available():  # inductor's CPU path imports cpp_extension, which warns about CUDA_HOME
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self.eager = encoder
        self.compiled = torch.compile(encoder, options={"freezing": True})
        self.failed = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            try:
                return self.compiled(images)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back, say why once
                self.failed = True
                log.warning("torch.compile failed (%s); running the encoder eagerly", first_line(exc))
        return self.eager(images)


@torch.inference_mode()
def encode_batch(encoder: nn.Module, images: torch.Tensor, dtype: torch.dtype, *, pad_to: int | None = None) -> torch.Tensor:
    """``(N, 3, S, S) -> (N, F)`` float32 features, under autocast when ``dtype`` is not float32.

    ``pad_to``: zero-pad the batch to this many images and drop their rows again, so a compiled
    encoder sees one shape and never recompiles for a short last batch (eval-mode layers treat
    every image on its own, so the padding cannot change the real rows).
    """
    device = next(encoder.parameters()).device
    images = images.to(device, non_blocking=True)
    n = images.shape[0]
    if pad_to is not None and 0 < n < pad_to:
        images = torch.cat([images, images.new_zeros((pad_to - n, *images.shape[1:]))])
    if dtype in (torch.float32, torch.int8):  # int8: the engine takes float32 images and quantizes them itself
        return encoder(images)[:n].float()
    with torch.autocast(device.type, dtype=dtype):
        return encoder(images)[:n].float()
