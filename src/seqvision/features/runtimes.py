"""Which inference runtime runs the frozen CNN's forward: torch, ONNX Runtime or OpenVINO.

``auto`` picks the fastest one on this machine for this backbone, image size and precision, by a short
measured probe (a few batches each, torch included), remembered in ``<cache root>/.runtimes/choices.json``
under the CPU's model and the flags that change the kernels (AVX-512, VNNI, bf16, AMX), the thread count
and the runtimes' versions, so the probe runs once per machine (one process measures, the others of a
launch wait for its choice); a CNN cheaper than decoding (:data:`MIN_FLOPS`) stays on torch without a
probe, and another runtime replaces torch only when clearly faster (:data:`MARGIN`). A runtime that is
not installed is left out; an explicitly named one that is not installed, or that cannot run the
request (a GPU, bf16), is a :class:`ConfigError` before any work starts.

int8 (``--precision int8``) is ONNX Runtime's alone, on the CPU (:mod:`seqvision.features.int8`):
``auto`` takes it without a probe, torch, OpenVINO and a GPU are refused.

Torch stays the runtime for a GPU, for bf16/fp16 (ONNX Runtime has no fast bf16 on CPUs; OpenVINO is
held to f32), for anything that is not a plain encoder (a temporal shift reads its neighbours through
the batch; the frozen stages of cached maps) and for anything that trains (nothing here is used there).

The features of another runtime agree with torch's to rounding (measured on real weights: see the
README), but are not bit-equal, so the feature cache key names the runtime and its version
(:class:`~seqvision.features.cache.CacheKey`) and vectors of two runtimes never mix.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from seqvision.errors import ConfigError, StorageError, first_line
from seqvision.features.cache import CacheKey, default_cache_root
from seqvision.features.engines import OnnxRuntimeEncoder, OpenVinoEncoder, onnx_file, package_version
from seqvision.features.int8 import Int8Encoder
from seqvision.io import atomic_write_text
from seqvision.models.temporal_shift import is_shifted

log = logging.getLogger("seqvision")

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
ENGINES = ("onnxruntime", "openvino")  # the runtimes that are not torch, in the order auto tries them
PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # what `pip install` takes
PROBE_BATCH = 16  # images per timed probe batch
PROBE_REPEATS = 3  # timed batches per runtime, after one warm-up; the best counts
# a CNN cheaper than this per image (FLOPs, multiply and add counted apart): decoding a photo costs as much
# as the CNN, so no other runtime is tried (nor exported) and the features stay exactly the live model's.
# Counted, not timed, so the decision is the same on a busy machine (MobileNetV2 at 224 px: 0.6 GFLOP)
MIN_FLOPS = 1e8
# another runtime replaces torch only when at least this much faster: its features are not bit-equal to
# torch's (a cache of its own) and it costs an export at start-up
MARGIN = 1.15
# CPU flags that change which kernels the runtimes pick (and so which one is fastest)
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")

_said: set[tuple] = set()  # choices already logged by this process: one line per run, not one per call
_flops: dict[tuple, float] = {}  # (architecture, image size) -> FLOPs per image, counted once per process


@dataclass(frozen=True)
class Runtime:
    """A resolved runtime: its name and, for the engines, the version that computed the features."""

    name: str  # torch | onnxruntime | openvino
    version: str = ""

    @property
    def label(self) -> str:
        """What the feature cache key and a checkpoint record: ``torch`` or ``onnxruntime 1.32.0``."""
        return self.name if self.name == "torch" else f"{self.name} {self.version}"

    @classmethod
    def of(cls, name: str) -> "Runtime":
        """``name`` at its installed version."""
        return cls(name, "" if name == "torch" else package_version(PACKAGE[name]))

    @classmethod
    def from_label(cls, label: str) -> "Runtime":
        """The runtime a :attr:`label` names (a feature cache key's, a checkpoint's)."""
        name, _, version = label.partition(" ")
        return cls(name, version)


TORCH = Runtime("torch")


def installed(name: str) -> bool:
    """Whether runtime ``name`` can be imported here (torch always can)."""
    if name == "torch":
        return True
    try:
        importlib.import_module(PACKAGE[name])
    except ImportError:
        return False
    return True


def check_runtime(runtime: str, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, before any work, a runtime that is unknown, not installed, or cannot run on ``device`` in
    ``dtype``. ``auto`` and ``torch`` always pass."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r}: use {', '.join(RUNTIMES)}")
    if dtype == torch.int8:
        check_int8(runtime, device)
        return
    if runtime in ("auto", "torch"):
        return
    if not installed(runtime):
        raise ConfigError(f"--runtime {runtime}: {runtime} is not installed; pip install {PACKAGE[runtime]} (or use --runtime auto)")
    if device.type != "cpu":
        raise ConfigError(f"--runtime {runtime} runs the CNN on the CPU only; on --device {device} use --runtime torch or auto")
    if dtype != torch.float32:
        name = str(dtype).removeprefix("torch.")
        raise ConfigError(f"--runtime {runtime} computes in float32 only, and the CNN's precision here is {name}; "
                          "pass --precision 32 with it, or use --runtime torch or auto")


def check_int8(runtime: str, device: torch.device) -> None:
    """int8 is ONNX Runtime's alone (a static quantization, :mod:`seqvision.features.int8`), on the CPU:
    refuse torch, OpenVINO, a GPU and a missing onnxruntime in one line, before any work."""
    if device.type != "cpu":
        raise ConfigError(f"--precision int8 runs on the CPU only (ONNX Runtime's int8 kernels); on --device {device} use --precision auto, 32 or bf16")
    if runtime not in ("auto", "onnxruntime"):
        raise ConfigError(f"--precision int8 is run by ONNX Runtime only, not by --runtime {runtime}; use --runtime onnxruntime or auto")
    if not installed("onnxruntime"):
        raise ConfigError("--precision int8 needs ONNX Runtime, which is not installed; pip install onnxruntime (or use --precision 32)")


def runs_elsewhere(encoder: nn.Module) -> bool:
    """Whether another runtime can run ``encoder``: a plain image encoder (trunk + pooling) without a
    temporal shift. The frozen stages of cached maps and shifted CNNs stay with torch."""
    return hasattr(encoder, "trunk") and hasattr(encoder, "pool_features") and not is_shifted(encoder)


def choose_runtime(
    runtime: str, encoder: nn.Module, device: torch.device, dtype: torch.dtype, *, root: Path | None = None,
) -> Runtime:
    """The runtime that runs ``encoder`` forward on ``device`` in ``dtype`` (see the module docstring).

    ``root``: the cache root holding the remembered choices and the ONNX files (default: the feature
    cache's). An explicit runtime is checked (:func:`check_runtime`) and kept, except for an encoder
    only torch runs (said once)."""
    check_runtime(runtime, device, dtype)
    if dtype == torch.int8:
        if not runs_elsewhere(encoder):
            raise ConfigError("--precision int8: this CNN (a temporal shift, or frozen stages of cached maps) runs with torch, "
                              "which has no int8 path here; use --precision 32")
        if runtime == "auto":
            _say(("int8",), logging.INFO, "runtime auto: onnxruntime for --precision int8 (the only runtime that runs it)")
        return Runtime.of("onnxruntime")
    if runtime == "torch":
        return TORCH
    if not runs_elsewhere(encoder):
        if runtime != "auto":
            _say(("shift", runtime), logging.WARNING, "--runtime %s: this CNN (a temporal shift, or frozen stages of cached maps) "
                 "runs with torch", runtime)
        return TORCH
    if runtime != "auto":
        return Runtime.of(runtime)
    if device.type != "cpu" or dtype != torch.float32:
        return TORCH
    candidates = [name for name in ENGINES if installed(name)]
    missing = [name for name in ENGINES if name not in candidates]
    if missing:  # said once, quietly: most machines lack one of them, and torch runs then
        _say(("missing", *missing), logging.INFO, "runtime auto: %s not installed, left out (pip install %s to try it)",
             " and ".join(missing), " ".join(PACKAGE[m] for m in missing))
    if not candidates:
        return TORCH
    flops = cnn_flops(encoder)
    if flops < MIN_FLOPS:
        _say(("small", encoder.name, encoder.preprocessing.image_size), logging.INFO, "runtime auto: torch for %s at %dpx "
             "(%.0f MFLOP per image: decoding costs as much, another runtime would gain little)", encoder.name,
             encoder.preprocessing.image_size, flops / 1e6)
        return TORCH
    folder = runtimes_folder(root)
    entry = _choice_key(encoder, dtype, candidates)
    # one process of the machine measures; the others (a distributed launch's, started together) wait
    # and read its choice: each measuring while the others run would time the load, and could choose apart
    with _machine_lock(folder):
        remembered = _read_choices(folder).get(entry)
        if isinstance(remembered, dict) and remembered.get("runtime") in ("torch", *candidates):
            chosen = Runtime.of(remembered["runtime"])
            _say(entry, logging.INFO, "runtime auto: %s for %s at %dpx (measured on this machine before: %s)", chosen.label,
                 encoder.name, encoder.preprocessing.image_size, _rates(remembered.get("images_per_second", {})))
            return chosen
        with _evaluating(encoder):
            rates = probe(encoder, ["torch", *candidates], folder)
        best = max(rates, key=rates.get)
        if rates[best] < MARGIN * rates["torch"]:
            best = "torch"
        choices = _read_choices(folder)
        choices[entry] = {"runtime": best, "images_per_second": {k: round(v, 1) for k, v in rates.items()}}
        atomic_write_text(folder / "choices.json", json.dumps(choices, indent=1, sort_keys=True))
    # a line a user sees: the probe took seconds, and the features' runtime may change
    _say(entry, logging.WARNING, "runtime auto: %s for %s at %dpx, measured once on this machine (%s; remembered in %s)",
         Runtime.of(best).label, encoder.name, encoder.preprocessing.image_size, _rates(rates), folder / "choices.json")
    return Runtime.of(best)


# what `train` calls the flags that extract and predict call --precision and --runtime: the frozen CNN's
# that fills its feature cache (its own --precision is the training's)
FEATURE_FLAGS = {"--precision": "--feature-precision", "--runtime": "--feature-runtime"}


@contextlib.contextmanager
def feature_flags(names: dict[str, str] = FEATURE_FLAGS) -> Iterator[None]:
    """Refusals raised inside (:class:`ConfigError`, :class:`StorageError`) name the flags as ``names``
    renames them: the runtimes and engines speak in extract's and predict's flags; ``train`` passes the
    same choices as ``--feature-precision``/``--feature-runtime``."""
    try:
        yield
    except (ConfigError, StorageError) as exc:
        message = re.sub(r"(?<![\w-])--[a-z][\w-]*", lambda m: names.get(m.group(0), m.group(0)), str(exc))
        if message == str(exc):
            raise
        raise type(exc)(message) from None


def runtime_for_cache(
    runtime: str, encoder: nn.Module, device: torch.device, dtype: torch.dtype, *, key: CacheKey, root: Path,
) -> Runtime:
    """The runtime that fills (or reads) the feature cache in ``root`` for ``key`` (whose ``runtime`` field
    is replaced): :func:`choose_runtime`, except that ``auto`` keeps the runtime whose features are
    already cached for this key (torch's for every cache made before runtimes existed), so a cache is
    never computed again only because another runtime would be faster now."""
    check_runtime(runtime, device, dtype)
    if runtime == "auto" and dtype != torch.int8:  # int8 has one runtime: nothing to keep
        names = ["torch"] + ([n for n in ENGINES if installed(n)] if device.type == "cpu" and runs_elsewhere(encoder) else [])
        for name in names:
            held = Runtime.of(name)
            if (Path(root) / replace(key, runtime=held.label).digest / "meta.json").is_file():
                _say(("cached", key.digest, held.label), logging.INFO, "runtime auto: %s, whose features of %s are cached in %s already",
                     held.label, encoder.name, root)
                return held
    return choose_runtime(runtime, encoder, device, dtype, root=root)


def build_engine(
    runtime: Runtime, encoder: nn.Module, *, root: Path | None = None, int8: bool = False, spinning: bool = True,
) -> nn.Module:
    """``encoder`` run by ``runtime`` (not torch): its ONNX file exported once into ``root``'s
    :func:`runtimes_folder`, the session built and checked against torch on a probe batch
    (:class:`~seqvision.features.engines.EngineEncoder`). ``int8`` (ONNX Runtime only): an
    :class:`~seqvision.features.int8.Int8Encoder`, quantized and checked at its first call, on that call's
    images. ``spinning`` False: ONNX Runtime's idle threads sleep at once, for work that shares the cores
    (:func:`~seqvision.features.engines.ort_session`); OpenVINO's are its own business."""
    folder = runtimes_folder(root)
    try:
        path = onnx_file(encoder, folder / "onnx")
    except OSError as exc:  # no room or no permission where the file goes: not the backbone's fault
        raise StorageError(f"--runtime {runtime.name}: cannot write the CNN's ONNX file in {folder / 'onnx'} "
                           f"({first_line(exc)}); set SEQVISION_CACHE to a writable folder, or use --runtime torch") from None
    except Exception as exc:  # noqa: BLE001 - an op the exporter lacks: name the backbone and the way out
        raise ConfigError(f"--runtime {runtime.name}: backbone {encoder.name!r} does not export to ONNX ({first_line(exc)}); "
                          "use --runtime torch") from None
    if int8:
        assert runtime.name == "onnxruntime", "check_int8 admits no other runtime"
        return Int8Encoder(encoder, path, threads=torch.get_num_threads(), spinning=spinning)
    with _evaluating(encoder):
        if runtime.name == "onnxruntime":
            return OnnxRuntimeEncoder(encoder, path, threads=torch.get_num_threads(), spinning=spinning).check()
        return OpenVinoEncoder(encoder, path, threads=torch.get_num_threads()).check()


@contextlib.contextmanager
def _machine_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/probe.lock`` for this machine's processes (none where ``fcntl`` is
    missing: Windows measures in each process)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "probe.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _evaluating(encoder: nn.Module) -> Iterator[None]:
    """``encoder`` in eval mode for a probe or an export (BatchNorm statistics must not move), its own
    mode restored after: a model may go on training it."""
    was = encoder.training
    encoder.eval()
    try:
        yield
    finally:
        encoder.train(was)


def probe(encoder: nn.Module, names: list[str], folder: Path, *, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Images per second of each runtime in ``names`` on the encoder's forward: :data:`PROBE_REPEATS`
    batches of :data:`PROBE_BATCH` images at its image size after a warm-up, the best batch counting.
    A runtime that cannot run the encoder is left out (said in one line); torch always runs."""
    size = encoder.preprocessing.image_size
    images = torch.rand(PROBE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))  # (B, 3, S, S)
    rates: dict[str, float] = {}
    for name in names:
        if name == "torch":
            net, batch = encoder, images.contiguous(memory_format=torch.channels_last)
        else:
            try:
                net, batch = build_engine(Runtime.of(name), encoder, root=folder.parent), images
            except ConfigError as exc:
                log.warning("runtime auto: %s left out (%s)", name, exc)
                continue
        best = float("inf")
        with torch.inference_mode():
            net(batch)  # warm-up: first-call allocations and kernel choices
            for _ in range(PROBE_REPEATS):
                start = clock()
                net(batch)
                best = min(best, clock() - start)
        rates[name] = PROBE_BATCH / max(best, 1e-9)
    return rates


@torch.no_grad()
def cnn_flops(encoder: nn.Module) -> float:
    """FLOPs of one image through ``encoder`` at its image size (convolutions and matrix products, as
    torch's flop counter counts them: 2 per multiply-add). Counted once per process for a backbone,
    pooling and size (the weights do not change it; the count takes ~0.1-1 s)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = encoder.preprocessing.image_size
    key = (_architecture(encoder), size)
    if key not in _flops:
        with _evaluating(encoder), FlopCounterMode(display=False) as counter:
            encoder(torch.zeros(1, 3, size, size, device=next(encoder.parameters()).device))
        _flops[key] = float(counter.get_total_flops())
    return _flops[key]


def runtimes_folder(root: Path | None = None) -> Path:
    """``<cache root>/.runtimes``: the remembered choices and the ONNX files (hidden from ``cache info``)."""
    return Path(root or default_cache_root()) / ".runtimes"


def cpu_signature() -> str:
    """The CPU's model name and the flags among :data:`KERNEL_FLAGS` it has (``/proc/cpuinfo``)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif name.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return f"{model} [{' '.join(f for f in KERNEL_FLAGS if f in flags)}]"


def _choice_key(encoder: nn.Module, dtype: torch.dtype, candidates: list[str]) -> str:
    """What a remembered choice holds for: this CPU, thread count, runtimes' versions, backbone, size, precision."""
    versions = " ".join(Runtime.of(n).label for n in candidates)
    return (f"{cpu_signature()} | {torch.get_num_threads()} threads | torch {torch.__version__} {versions} | "
            f"{_architecture(encoder)} | {encoder.preprocessing.image_size}px | {str(dtype).removeprefix('torch.')}")


def _architecture(encoder: nn.Module) -> str:
    """The backbone's name, pooling and size in parameters: a trunk cut short (``--drop-stages``) keeps its
    name but is another network, with a cost and a fastest runtime of its own."""
    from seqvision.models.backbones import network_name

    return f"{network_name(encoder)} pool {encoder.pool} {sum(p.numel() for p in encoder.parameters())} parameters"


def _read_choices(folder: Path) -> dict:
    """The remembered choices; ``{}`` when there are none or the file is damaged (the probe runs again)."""
    try:
        choices = json.loads((folder / "choices.json").read_text())
    except (OSError, ValueError):
        return {}
    return choices if isinstance(choices, dict) else {}


def _rates(rates: dict) -> str:
    return ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items()) + " images/s"


def _say(key: tuple | str, level: int, message: str, *args) -> None:
    """Log ``message`` once per process for ``key``."""
    if key not in _said:
        _said.add(key)
        log.log(level, message, *args)
