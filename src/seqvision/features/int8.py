"""The frozen CNN in int8, run by ONNX Runtime: a static quantization calibrated on the run's own images.

Why static and why the user's images: the activations' int8 ranges are fixed once, from real inputs,
so each convolution runs on 8-bit integers (u8 activations x s8 weights) without measuring ranges
per batch; ranges taken from random pixels or another data set would clip the user's images.

The fp32 ONNX file of trunk + pool (:func:`~seqvision.features.engines.onnx_file`) is quantized by
``onnxruntime.quantization.quantize_static``: QDQ format, weights per output channel (symmetric int8),
activations per tensor (asymmetric uint8, min/max of the calibration images), ``reduce_range`` (7-bit
weights: without VNNI the u8 x s8 pair sums of AVX2's ``vpmaddubsw`` saturate at 16 bits otherwise;
measured on MobileNetV2's real weights it lifts the mean cosine to fp32 from 0.91 to 0.96). The
calibration images are the first :data:`CALIBRATION_IMAGES` of the first batch the encoder is given,
preprocessed exactly as the run preprocesses every image (they are the run's own batch). The int8 file
is kept beside the fp32 one, named by the fp32 file's name (which hashes the weights, backbone, pooling,
size, opset, exporter) plus a digest of the calibration images and of the quantizer's settings and version.

An int8 network is used only where it keeps the features: on the calibration images its features must
be within a cosine of :data:`MIN_COSINE` of torch's fp32 ones, else a :class:`ConfigError` says so
before any vector is kept (MobileNetV2's depthwise convolutions fail it: min cosine ~0.82).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqvision.errors import ConfigError, first_line
from seqvision.features.engines import EngineEncoder, ort_session, package_version
from seqvision.io import atomic_write

log = logging.getLogger("seqvision")

# images the activation ranges are measured on: a batch of extract's default size; min/max ranges settle
# within tens of natural images, and calibrating costs one fp32 forward of each (plus ~5 s of quantizing)
CALIBRATION_IMAGES = 64
CALIBRATION_BATCH = 8  # images per calibration forward: bounds the calibrator's memory (it keeps every output)
# the least cosine between an image's int8 and fp32 features, on the calibration images, for int8 to be
# used: ResNet-18 keeps ~0.9997; MobileNetV2 (real weights, photos) falls to ~0.82, a different feature
MIN_COSINE = 0.98
SETTINGS = "qdq per-channel s8 weights reduce-range u8 activations minmax"  # in the file's digest


def calibration_digest(images: torch.Tensor) -> str:
    """A digest of the calibration images' identities: their preprocessed pixels ``(n, 3, S, S)`` (the same
    files decoded and preprocessed the same way give the same digest; another crop, size or
    normalization another one), with the quantizer's settings and version."""
    h = hashlib.sha256(f"{SETTINGS} onnxruntime {package_version('onnxruntime')} {tuple(images.shape)}".encode())
    h.update(images.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def int8_file(fp32: Path, images: torch.Tensor) -> Path:
    """The int8 ONNX file of ``fp32`` calibrated on ``images`` ``(n, 3, S, S)``, quantized on first use."""
    path = fp32.with_name(f"{fp32.stem}-int8-{calibration_digest(images)}.onnx")
    if path.is_file():
        with contextlib.suppress(OSError):  # a read-only cache is still read
            path.touch()  # recently used: kept by the engines' pruning
        return path
    atomic_write(path, lambda tmp: _quantize(fp32, tmp, images))
    return path


def _quantize(fp32: Path, out: Path, images: torch.Tensor) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        """The calibration images, :data:`CALIBRATION_BATCH` at a time, as the graph's ``images`` input."""

        def __init__(self) -> None:
            self.chunks = iter(images.split(CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self.chunks, None)
            return None if chunk is None else {"images": chunk.float().contiguous().numpy()}  # (b, 3, S, S)

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), _quiet_root_log():
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred and the graph optimized, as the quantizer asks
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


@contextlib.contextmanager
def _quiet_root_log():
    """The quantizer logs a line per tensor it touches on the root logger at INFO: not a user's business."""
    was = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(was)


class Int8Encoder(EngineEncoder):
    """The encoder's forward in int8 by ONNX Runtime, quantized at its first call (see the module docstring):
    the first :data:`CALIBRATION_IMAGES` images of that call calibrate it, and are checked against torch."""

    runtime = "onnxruntime"

    def __init__(self, encoder: nn.Module, fp32: Path, *, threads: int, spinning: bool = True) -> None:
        super().__init__(encoder)
        self.fp32 = Path(fp32)
        self.threads = threads
        self.spinning = spinning  # see engines.ort_session
        self.session = None  # built at the first call, from its images
        self.calibrated_on = 0  # how many images calibrated it

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": images})[0]  # (n, F)

    def check(self) -> "Int8Encoder":
        """Nothing to check before calibration (the first call quantizes and checks); returns ``self``."""
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` float32 -> ``(N, F)`` float32; the first call with images calibrates first."""
        if self.session is None and images.shape[0]:
            self.calibrate(images[:CALIBRATION_IMAGES])
        return super().forward(images)

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """Quantize on ``images`` ``(n, 3, S, S)`` (preprocessed as the run's), build the session and check
        its features on them against torch's fp32 (:data:`MIN_COSINE`), or raise :class:`ConfigError`."""
        images = images.detach().cpu().float().contiguous()
        name = self.eager.name
        try:
            path = int8_file(self.fp32, images)
            session = ort_session(path, threads=self.threads, spinning=self.spinning)
            got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])  # (n, F)
        except Exception as exc:  # noqa: BLE001 - the quantizer or the session fails: named in one line
            raise ConfigError(f"--precision int8: backbone {name!r} cannot be quantized ({first_line(exc)}); use --precision 32") from None
        want = self.eager(images).float()  # (n, F) torch fp32
        cosine = float(nn.functional.cosine_similarity(got, want, dim=-1).min()) if got.shape == want.shape else float("nan")
        if not (torch.isfinite(got).all() and cosine >= MIN_COSINE):
            raise ConfigError(f"--precision int8: backbone {name!r} in int8 does not keep its features (min cosine {cosine:.3f} "
                              f"to fp32 on the first {len(images)} images, under {MIN_COSINE}); use --precision 32")
        self.session, self.calibrated_on = session, len(images)
        log.info("int8: %s quantized on the run's first %d images (min cosine %.4f to fp32 on them; %s)",
                 name, len(images), cosine, path.name)
