"""``seqvision serve``: load a checkpoint, build the app, run it with uvicorn until stopped."""

from __future__ import annotations

import ipaddress
import os
import warnings
from pathlib import Path

from seqvision.errors import CheckpointError, ConfigError
from seqvision.serving.limits import ServeLimits

API_KEY_ENV = "SEQVISION_API_KEY"
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only this machine's loopback interface (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_options(checkpoint: str | Path, host: str, port: int) -> None:
    """Refuse a missing checkpoint or a port out of range before anything is loaded."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file): give a best.ckpt or last.ckpt written by seqvision train")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: give a port from 1 to 65535 (0: any free port, said in the log)")
    if not host:
        raise ConfigError("--host: give an address to bind (127.0.0.1 keeps the service on this machine)")


def resolve_api_key(api_key: str | None, host: str) -> str | None:
    """The key from ``api_key`` or ``$SEQVISION_API_KEY``; a warning when none protects a non-loopback bind."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    key = key or None  # an empty key is no key
    if key is None and not is_loopback(host):
        warnings.warn(
            f"serving on {host} without an API key: anyone who can reach this address can use the model; "
            f"set --api-key or ${API_KEY_ENV}", stacklevel=2,
        )
    return key


def serve(
    checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
    limits: ServeLimits | None = None, device: str = "cpu", precision: str = "auto", chunk_size: int | None = None,
    queue_size: int = 64, max_wait_ms: float = 5.0, max_batch_images: int | None = None, log_level: str = "info",
    runtime: str = "auto",
) -> None:
    """Serve ``checkpoint`` on ``host:port`` until interrupted (see :func:`build_app` for the endpoints).

    Every option is checked before the checkpoint is loaded; ``api_key`` defaults to
    ``$SEQVISION_API_KEY``. ``chunk_size``: images per CNN pass (default: the run's, else chosen from
    the backbone and free memory); ``queue_size``, ``max_wait_ms``, ``max_batch_images``: the dynamic
    batching (:class:`DynamicBatcher`).
    """
    import uvicorn

    from seqvision.inference.predictor import Predictor
    from seqvision.serving.app import build_app
    from seqvision.serving.batching import DynamicBatcher, check_batching

    check_options(checkpoint, host, port)
    check_batching(queue_size=queue_size, max_wait_ms=max_wait_ms, max_batch_images=max_batch_images)
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"--chunk-size {chunk_size}: give at least 1")
    if precision == "int8":  # its ranges come from a batch of the run's images; the first request may hold one
        raise ConfigError("--precision int8 calibrates on a batch of the run's first images, and a server's first request "
                          "may hold one image; use --precision 32 (or extract/predict with int8)")
    limits = limits or ServeLimits()
    key = resolve_api_key(api_key, host)
    predictor = Predictor.load(checkpoint, device=device, precision=precision, runtime=runtime)
    if chunk_size:
        predictor.chunk_size = chunk_size
    batcher = DynamicBatcher(predictor, queue_size=queue_size, max_wait_ms=max_wait_ms, max_batch_images=max_batch_images)
    try:
        app = build_app(predictor, limits, api_key=key, batcher=batcher)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        batcher.close()
