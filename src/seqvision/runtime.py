"""Process-level performance settings: the allocator and the fastest numeric precision of the device."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import lru_cache
from pathlib import Path

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

    Every command that runs a CNN applies it, and so does what runs one from Python: ``Predictor.load`` (predict,
    evaluate, report, ``Stream``, serve), training's ``fit`` and extraction: without it torch's MobileNetV2
    at batch 64 ran 3x slower on a 2-core AMD EPYC (``benchmarks/results/runtime_speed.txt``: 33-35 img/s untuned,
    101-107 tuned; ONNX Runtime and OpenVINO unaffected). The cost: the process keeps its peak heap instead of
    returning it to the OS between batches.
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
    too, so a precision resolved once can be passed on as ``str(dtype)``. ``int8`` gives ``torch.int8``: the
    CNN's inference quantized, by ONNX Runtime only (refused elsewhere by ``check_runtime``)."""
    if precision in ("32", "fp32", "float32"):
        return torch.float32
    if precision in ("bf16", "bfloat16"):
        return torch.bfloat16
    if precision in ("16", "fp16", "float16"):
        return torch.float16
    if precision == "int8":  # the CNN's inference only, by ONNX Runtime on the CPU (features.runtimes.check_int8)
        return torch.int8
    if precision != "auto":
        raise ConfigError(f"--precision {precision!r}: use auto, 32, bf16, 16 or int8")
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



# cgroup v1 writes "no limit" as 2**63 - 1 rounded down to a page; anything this large is no limit
_NO_LIMIT = 1 << 60


def available_memory(device: torch.device, *, proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes that can still be allocated: a GPU's free memory; on the CPU the smaller of the machine's
    available RAM (Linux's ``MemAvailable``: free memory plus what the page cache would give back, else the
    free pages) and what this process's memory cgroup leaves (:func:`cgroup_available`: the limit of a
    Docker or Kubernetes container, which the machine's figure knows nothing about).

    ``proc`` and ``cgroup_root``: where ``/proc`` and the cgroup file systems are (a test's fake tree)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    host = _host_available(proc / "meminfo")
    limit = cgroup_available(proc / "self" / "cgroup", cgroup_root)
    return host if limit is None else max(0, min(host, limit))


def _host_available(meminfo: Path) -> int:
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4 << 30  # unknown: assume a small machine


def cgroup_available(self_cgroup: Path, root: Path) -> int | None:
    """Bytes the memory cgroup of this process (``self_cgroup``: its ``/proc/self/cgroup``) and every
    ancestor up to the mount at ``root`` can still take, or None where none has a limit.

    cgroup v2 (line ``0::PATH``): ``memory.max`` ("max": no limit) minus ``memory.current``; v1 (the line
    naming the ``memory`` controller, mounted at ``root/memory``): ``memory.limit_in_bytes`` minus
    ``memory.usage_in_bytes``. The usage counts page cache, so the inactive file pages (``memory.stat``),
    which the kernel reclaims before it kills, are taken off it as ``MemAvailable`` does. The smaller of
    the two versions where both are mounted (a hybrid machine)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:  # the v2 unified hierarchy
            found.append(_headroom(root, path, "memory.max", "memory.current", "inactive_file"))
        elif "memory" in controllers.split(","):  # v1
            found.append(_headroom(root / "memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    limits = [room for room in found if room is not None]
    return min(limits) if limits else None


def _headroom(mount: Path, path: str, limit_file: str, usage_file: str, cache_field: str) -> int | None:
    """The least ``limit - (usage - inactive page cache)`` of the cgroup at ``path`` under ``mount`` and
    its ancestors (a limit may sit on a parent: a Kubernetes pod's, above its container), or None."""
    folder = mount / path.strip("/")
    if not folder.is_dir():  # a container's own cgroup mounted as the root (v1 Docker): it is the mount
        folder = mount
    least = None
    while True:
        limit = _read_bytes(folder / limit_file)
        if limit is not None:
            usage = (_read_bytes(folder / usage_file) or 0) - _stat_field(folder / "memory.stat", cache_field)
            room = limit - max(usage, 0)
            least = room if least is None else min(least, room)
        if folder == mount or mount not in folder.parents:
            return least
        folder = folder.parent


def _read_bytes(path: Path) -> int | None:
    """A cgroup file's number of bytes; None for "max", an absurdly large number (no limit) or no file."""
    try:
        value = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return value if value < _NO_LIMIT else None


def _stat_field(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
