"""The HTTP service: ``POST /predict``, ``GET /model``, ``GET /health`` (FastAPI; docs at ``/docs``).

Every refusal is ``{"error": "..."}`` with its status (see :class:`ServeError`). A request's files live
in a temporary folder of their own, removed before the answer is sent (the decoded images travel on in
memory); nothing else is written.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import shutil
import tempfile
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from seqvision.inference.predictor import Predictions, Predictor, output_columns
from seqvision.serving.batching import DynamicBatcher
from seqvision.serving.errors import ServeError
from seqvision.serving.inputs import ModelInput, prepare
from seqvision.serving.limits import ServeLimits
from seqvision.serving.uploads import FILES_FIELD, SAMPLE_FIELD, UploadReader

log = logging.getLogger("seqvision")

# a request refused part-way has the rest of its body read and dropped, up to this many bytes, before
# the answer: an HTTP implementation that closes a connection with unread data resets it, and the client
# may lose the 413 or 401 (uvicorn's h11 reads on by itself; this keeps the answer whatever runs it)
DRAIN_BYTES = 64 * 1024 * 1024

_PREDICT_DOC = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FILES_FIELD], "properties": {
            FILES_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                          "description": "the sample's images, in order (repeat the field), or one video file"},
            SAMPLE_FIELD: {"type": "string", "description": "the id the rows carry (default: the video's name, or 'upload')"},
        }}}}},
}
_ERRORS = {status: {"description": text, "content": {"application/json": {"example": {"error": "..."}}}} for status, text in {
    400: "empty or malformed request", 401: "missing or wrong API key", 413: "over a limit (size, images, pixels, video length)",
    415: "not an image or a video", 422: "a file that cannot be decoded", 503: "queue full or shutting down",
}.items()}


def build_app(
    predictor: Predictor, limits: ServeLimits | None = None, *, api_key: str | None = None,
    batcher: DynamicBatcher | None = None, queue_size: int = 64, max_wait_ms: float = 5.0,
    max_batch_images: int | None = None, temp_dir: str | Path | None = None,
) -> FastAPI:
    """The service for ``predictor``.

    Args:
        predictor: the loaded checkpoint (:meth:`Predictor.load`).
        limits: what one request may hold (default :class:`ServeLimits`).
        api_key: when set, every request must send it (``X-API-Key`` or ``Authorization: Bearer``).
        batcher: a ready :class:`DynamicBatcher` (the caller closes it); else one is made from
            ``queue_size``, ``max_wait_ms`` and ``max_batch_images`` and closed when the app stops.
        temp_dir: where the per-request temporary folders go (default: the system's).
    """
    limits = limits or ServeLimits()
    owned = batcher is None
    if owned:
        batcher = DynamicBatcher(predictor, queue_size=queue_size, max_wait_ms=max_wait_ms, max_batch_images=max_batch_images)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if owned:
            await run_in_threadpool(batcher.close)

    app = FastAPI(title="seqvision", summary="Predictions from a seqvision checkpoint", lifespan=lifespan)
    app.state.batcher, app.state.predictor, app.state.limits = batcher, predictor, limits
    if api_key:
        app.add_middleware(ApiKeyMiddleware, key=api_key)
    _add_error_handlers(app)
    info = model_info(predictor, limits)

    @app.get("/health", summary="liveness, queue depth and batching counters")
    async def health() -> dict:
        return {"status": "ok", "queue_depth": batcher.queue_depth, "queue_size": batcher.queue_size, "batching": batcher.stats()}

    @app.get("/model", summary="task, class names, preprocessing, frame sampling, backbone, head, limits")
    async def model() -> dict:
        return info

    @app.post("/predict", summary="predict one sample: several images in order, or one video",
              openapi_extra=_PREDICT_DOC, responses=_ERRORS)
    async def predict(request: Request) -> JSONResponse:
        folder = Path(tempfile.mkdtemp(prefix="seqvision-serve-", dir=temp_dir))
        try:
            uploads, fields = await receive_uploads(request, folder, limits)
            model_input = await run_in_threadpool(prepare, predictor, uploads, fields, limits)
        finally:
            await run_in_threadpool(shutil.rmtree, folder, True)
        outputs = await asyncio.wrap_future(batcher.submit(model_input.images, model_input.clip_lengths))
        return JSONResponse(answer(predictor, model_input, outputs))

    return app


async def receive_uploads(request: Request, folder: Path, limits: ServeLimits) -> tuple[list, dict[str, str]]:
    """Stream the body into ``folder`` through an :class:`UploadReader` (its disk writes in the thread
    pool). A body whose declared length is over the limit is refused unread; on a refusal found on the
    way, the rest of the body is read and dropped (up to :data:`DRAIN_BYTES`), then the error is raised."""
    error: ServeError | None = None
    reader: UploadReader | None = None
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    if declared > limits.max_request_bytes:  # refused unread (a client waiting on Expect: 100-continue sends nothing)
        raise ServeError(413, f"request body of {declared / 2**20:.1f} MB is over the {limits.max_request_mb:g} MB limit: "
                              "send fewer or smaller files")
    try:
        content_type = request.headers.get("content-type")
        if not content_type and declared == 0:
            raise ServeError(400, "empty request: no files. Send images (field 'files', repeated, in order) or one video as multipart/form-data")
        reader = UploadReader(content_type, folder, limits)
    except ServeError as exc:
        error = exc
    dropped = 0
    try:
        async for chunk in request.stream():
            if error is None:
                try:
                    await run_in_threadpool(reader.feed, chunk)
                except ServeError as exc:
                    error = exc
            else:
                dropped += len(chunk)
                if dropped > DRAIN_BYTES:
                    break
        if error is not None:
            raise error
        return reader.finish()
    except ClientDisconnect:  # nobody to answer; said as a 400 rather than logged as a server error
        raise ServeError(400, "the client disconnected before the end of its request") from None
    finally:
        if reader is not None:
            reader.close()


def answer(predictor: Predictor, model_input: ModelInput, outputs) -> dict:
    """The JSON answer: ``predictions`` (rows with ``predict``'s fields: ``sample``, [``image``,]
    ``prediction``, a value per output), ``frames`` (the images the model saw, in order: after the
    checkpoint's sampling) and ``skipped`` (bad images left out, when the checkpoint skips them)."""
    per_image = predictor.spec.per_image
    preds = Predictions([model_input.sample_id] * len(outputs), outputs, frames=model_input.frames if per_image else [])
    return {"predictions": predictor.rows(preds), "frames": model_input.frames, "skipped": model_input.skipped}


def model_info(predictor: Predictor, limits: ServeLimits) -> dict:
    """What a client needs to know about the model: what its outputs mean and how inputs are prepared."""
    cfg, spec = predictor.cfg, predictor.spec
    info = {
        "task": spec.task,
        "per_image": spec.per_image,
        "classes": list(spec.class_names),
        "targets": list(spec.target_names),
        "output_columns": output_columns(predictor.task.names),  # the keys of the per-output values in a row
        "preprocessing": asdict(predictor.preprocessing),
        "sampling": asdict(cfg.data.sampling_policy(train=False)),
        "backbone": cfg.model.backbone,
        "pool": cfg.model.pool,
        "head": cfg.model.head,
        "precision": predictor.precision,
        "device": str(predictor.device),
        "checkpoint": {"epoch": predictor.source.get("epoch"), "versions": predictor.source.get("versions") or {}},
        "limits": limits.to_dict(),
    }
    if spec.task == "multilabel":  # the per-label decision thresholds chosen in validation
        info["thresholds"] = dict(zip(spec.class_names, predictor.thresholds))
    return info


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": "..."}``: ours with their status, the framework's (404, 405) with theirs."""

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"invalid request: {exc.errors()[:3]}"}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500)


class ApiKeyMiddleware:
    """Every HTTP request must carry the key: ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``
    (compared in constant time). A refused request's body is drained, then 401 is answered."""

    def __init__(self, app, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = self._given(scope["headers"])
        if given is not None and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        await _drain(receive)
        message = "missing API key: send it in the X-API-Key header (or Authorization: Bearer KEY)" if given is None else "wrong API key"
        response = JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    @staticmethod
    def _given(headers: list[tuple[bytes, bytes]]) -> bytes | None:
        for name, value in headers:
            if name == b"x-api-key":
                return value.strip()
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return value[7:].strip()
        return None


async def _drain(receive) -> None:
    """Read and drop a request's body (up to :data:`DRAIN_BYTES`)."""
    seen = 0
    while seen <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return
