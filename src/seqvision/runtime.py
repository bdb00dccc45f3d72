"""Process-level performance settings: the allocator and the fastest numeric precision of the device."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import lru_cache

import torch

from seqvision.errors import ConfigError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Keep large activation buffers in the heap instead of returning them to the OS after every batch.

    glibc serves big allocations with mmap and unmaps them on free, so each forward pass page-faults its
    activations in again (``benchmarks/extract_speed.py`` prints the page faults per batch with and
    without this setting, side by side). ``mallopt`` is the
    in-process form of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``. No-op off glibc, or when
    ``SEQVISION_NO_MALLOC_TUNING=1``. Returns whether the setting was applied.
    """
    if os.environ.get("SEQVISION_NO_MALLOC_TUNING") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1  # an int: the largest threshold it takes (2 GiB)
    return bool(ok)


@lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """``auto``: bf16 where the hardware runs it fast (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp16 on
    CUDA GPUs without bf16, else fp32. The dtype names (``float32``, ``bfloat16``, ``float16``) are accepted
    too, so a precision resolved once can be passed on as ``str(dtype)``."""
    if precision in ("32", "fp32", "float32"):
        return torch.float32
    if precision in ("bf16", "bfloat16"):
        return torch.bfloat16
    if precision in ("16", "fp16", "float16"):
        return torch.float16
    if precision != "auto":
        raise ConfigError(f"--precision {precision!r}: use auto, 32, bf16 or 16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def default_workers() -> int:
    """One DataLoader worker per spare core (at most 4): decoding overlaps the CNN on the main process."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def default_device() -> torch.device:
    """This process's GPU (``cuda:LOCAL_RANK`` when a launcher such as torchrun started one process per
    GPU), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def launch_world() -> tuple[int, int]:
    """``(global rank, world size)`` of a torchrun-style launch (``RANK`` and ``WORLD_SIZE`` set), else ``(0, 1)``."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


_GROUP_OWNER = {"seqvision": False}  # whether seqvision initialized this process's default group itself


def inference_group() -> tuple[int, int]:
    """For ``predict``, ``evaluate`` and ``report`` launched by torchrun: ``(rank, world size)``, with the
    process group (gloo: it only gathers results, on any device) initialized here; ``(0, 1)`` otherwise.

    A process group that something else initialized (a user's own distributed job, Lightning's DDP)
    means the caller owns the distribution and may call from one rank only: then nothing is sharded,
    so no rank waits for the others."""
    rank, world = launch_world()
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if dist.is_initialized() and not _GROUP_OWNER["seqvision"]:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        _GROUP_OWNER["seqvision"] = True
    return rank, world


def resolve_device(spec: "str | torch.device") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a device that exists here; anything else is a
    :class:`ConfigError` naming what is available (never a RuntimeError from deep inside torch).
    A bare ``cuda`` is this process's GPU: ``cuda:LOCAL_RANK`` under torchrun (one process per GPU), so
    ``--device cuda`` does not put every process of a launch on GPU 0."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {spec!r}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if device.index is None:
            device = default_device()
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {spec}: Apple's MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ConfigError(f"--device {spec}: use cpu, cuda or cuda:N")
    return device



def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated: a GPU's free memory, or the CPU's available RAM (Linux's
    ``MemAvailable``: free memory plus what the page cache would give back), else the free pages."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4 << 30  # unknown: assume a small machine
