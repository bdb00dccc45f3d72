"""``seqvision serve``: a checkpoint behind an HTTP API (FastAPI + uvicorn), with dynamic batching.

Needs the ``serve`` extra: ``pip install "seqvision[serve]"``. The modules: :mod:`limits` (what one
request may hold), :mod:`uploads` (the multipart body streamed to a temporary folder, counted),
:mod:`inputs` (files checked from their headers, then loaded as ``predict`` loads them),
:mod:`batching` (one worker thread, requests sharing CNN passes), :mod:`app` (the endpoints) and
:mod:`server` (options checked, checkpoint loaded, uvicorn run).
"""

from seqvision.serving.limits import ServeLimits

__all__ = ["ServeLimits", "build_app", "serve", "DynamicBatcher"]


def __getattr__(name: str):
    # fastapi is imported only when the app is asked for: ServeLimits (and `seqvision --help`) need none
    if name == "build_app":
        from seqvision.serving.app import build_app

        return build_app
    if name == "serve":
        from seqvision.serving.server import serve

        return serve
    if name == "DynamicBatcher":
        from seqvision.serving.batching import DynamicBatcher

        return DynamicBatcher
    raise AttributeError(f"module 'seqvision.serving' has no attribute {name!r}")
