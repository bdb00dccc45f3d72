"""Dynamic batching: requests that arrive within a few milliseconds share one CNN pass.

One worker thread owns the model. Requests wait in a bounded queue (a full queue is refused at once,
so a burst cannot grow memory without bound). The worker takes the oldest request, collects more
until ``max_wait_ms`` after that request arrived or until ``max_batch_images`` images, runs the CNN on
all their images in passes of at most the predictor's ``chunk_size`` and the temporal and task heads
once on the whole batch, and resolves each request's future. A CNN pass costs a fixed overhead plus
a per-image cost, so under load each image costs less and throughput grows with the load.

Padding never changes a result (the house contract), so a request's outputs do not depend on which
other requests shared its batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from seqvision.data.dataset import Batch
from seqvision.errors import ConfigError
from seqvision.features.encode import encode_batch
from seqvision.inference.predictor import Predictor
from seqvision.serving.errors import ServeError
from seqvision.models.temporal_shift import frames_of, is_shifted

log = logging.getLogger("seqvision")


@dataclass
class _Job:
    images: torch.Tensor  # (T, 3, S, S): one request's images, clip after clip
    clip_lengths: list[int]
    arrived: float  # time.monotonic() when queued: the batching wait counts from here
    future: Future = field(default_factory=Future)


def check_batching(*, queue_size: int, max_wait_ms: float, max_batch_images: int | None) -> None:
    """Raise :class:`ConfigError` for batching options that cannot work (before anything is loaded)."""
    if queue_size < 1:
        raise ConfigError(f"--queue-size {queue_size}: at least 1 request must be able to wait")
    if not 0 <= max_wait_ms <= 10_000:
        raise ConfigError(f"--max-wait-ms {max_wait_ms}: give 0 to 10000 milliseconds")
    if max_batch_images is not None and max_batch_images < 1:
        raise ConfigError(f"--max-batch-images {max_batch_images}: give at least 1")


_STOP = object()  # queued by close(): everything queued before it is still answered


class DynamicBatcher:
    """Runs ``predictor``'s model for many requests at once, from one worker thread.

    Args:
        predictor: the loaded model; only the worker uses it once started.
        queue_size: requests that may wait; one more is refused (:class:`ServeError` 503).
        max_wait_ms: how long the oldest waiting request may wait for others to join its batch
            (0: only those already waiting join).
        max_batch_images: images per batch (default: the predictor's ``chunk_size``, one CNN pass);
            a request is never split, and one larger than this runs alone. 1 turns batching off.
        start: start the worker now (tests hold it back to fill the queue).
    """

    def __init__(
        self, predictor: Predictor, *, queue_size: int = 64, max_wait_ms: float = 5.0,
        max_batch_images: int | None = None, start: bool = True,
    ) -> None:
        check_batching(queue_size=queue_size, max_wait_ms=max_wait_ms, max_batch_images=max_batch_images)
        self.predictor = predictor
        # resolved here, on the caller's thread, before the first request: the encoder's inference form
        # (oneDNN / channels_last, converted once) and the images per CNN pass (probes the free memory)
        self._net = predictor._inference_encoder()
        self.chunk_size = predictor.chunk_size
        self.queue_size = queue_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_batch_images = max_batch_images or self.chunk_size
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._held: _Job | None = None  # taken from the queue but left for the next batch (it did not fit)
        self._closing = False
        self._lock = threading.Lock()
        self._stats = {"requests": 0, "batches": 0, "cnn_passes": 0, "images": 0, "busy_s": 0.0}  # busy_s: computing
        self._batch_requests: Counter[int] = Counter()  # requests per batch -> batches
        self._thread = threading.Thread(target=self._loop, name="seqvision-batcher", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start the worker (once)."""
        if not self._thread.is_alive() and not self._closing:
            self._thread.start()

    def submit(self, images: torch.Tensor, clip_lengths: list[int]) -> Future:
        """Queue one request's images ``(T, 3, S, S)`` (clips of ``clip_lengths``); the future resolves to
        its outputs: ``(1, K)`` for a per-sample task (clips averaged), ``(T, K)`` per image. Raises
        :class:`ServeError` 503 when the queue is full or the batcher is closing."""
        if self._closing:
            raise ServeError(503, "the server is shutting down: try again later")
        job = _Job(images, list(clip_lengths), time.monotonic())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ServeError(503, f"the server is busy ({self.queue_size} requests waiting): try again shortly") from None
        return job.future

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not counting the batch being computed)."""
        return self._queue.qsize()

    def stats(self) -> dict:
        """Counters since start: requests, batches, CNN passes, images, seconds spent computing (``busy_s``:
        near the wall time, the model is the bottleneck) and requests per batch."""
        with self._lock:
            out = dict(self._stats)
            out["batch_requests"] = {str(k): v for k, v in sorted(self._batch_requests.items())}
        out["mean_images_per_pass"] = round(out["images"] / out["cnn_passes"], 2) if out["cnn_passes"] else 0.0
        return out

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, answer those already queued, stop the worker."""
        if self._closing:
            return
        self._closing = True
        stopping = ServeError(503, "the server is shutting down: try again later")
        if not self._thread.is_alive():  # never started: nothing will answer the waiting requests
            self._fail_waiting(stopping)
            return
        try:
            self._queue.put(_STOP, timeout=timeout)  # behind every queued request (waits while the queue is full)
        except queue.Full:
            self._fail_waiting(stopping)
            self._queue.put_nowait(_STOP)
        self._thread.join(timeout)

    # -- the worker ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            jobs = self._collect()
            if jobs is None:
                return
            if jobs:
                self._run(jobs)

    def _collect(self) -> list[_Job] | None:
        """The next batch: the oldest request, then those that arrive until its wait is over or the batch
        is full. None once the stop sentinel is reached (after the last real batch)."""
        first = self._held or self._queue.get()
        self._held = None
        if first is _STOP:
            return None
        jobs, images = [first], len(first.images)
        deadline = first.arrived + self.max_wait
        while images < self.max_batch_images:
            try:
                wait = deadline - time.monotonic()
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or images + len(job.images) > self.max_batch_images:
                self._held = job  # a request is never split: it starts the next batch (the stop: after this one)
                break
            jobs.append(job)
            images += len(job.images)
        return jobs

    def _run(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        start = time.perf_counter()
        try:
            outputs, passes = self._forward(live)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error, the worker goes on
            log.exception("batch of %d requests failed", len(live))
            for job in live:
                job.future.set_exception(exc)
            return
        with self._lock:
            self._stats["requests"] += len(live)
            self._stats["batches"] += 1
            self._stats["cnn_passes"] += passes
            self._stats["images"] += sum(len(j.images) for j in live)
            self._stats["busy_s"] += time.perf_counter() - start
            self._batch_requests[len(live)] += 1
        for job, out in zip(live, outputs):
            job.future.set_result(out)

    @torch.inference_mode()
    def _forward(self, jobs: list[_Job]) -> tuple[list[torch.Tensor], int]:
        """Every job's outputs (float32, CPU) and the number of CNN passes it took."""
        images = torch.cat([j.images for j in jobs])  # (N, 3, S, S), N = all images of all requests
        lengths = torch.tensor([n for j in jobs for n in j.clip_lengths], dtype=torch.long)  # (C,) images per clip
        parts = self._encode(images, lengths)  # (n, F) each, float32
        features = torch.cat(parts)  # (N, F) float32
        groups = torch.tensor([b for b, j in enumerate(jobs) for _ in j.clip_lengths], dtype=torch.long)  # (C,) clip -> job
        out = self.predictor.model.forward_features(features, lengths).float().cpu()  # (C, K), or (N, K) per image
        if self.predictor.spec.per_image:
            return list(out.split([len(j.images) for j in jobs])), len(parts)  # (T_j, K) each
        # a request's clips averaged, as predict merges them (Batch.merge_clips): (B, K)
        merged = Batch(features, lengths, [""] * len(jobs), groups=groups).merge_clips(out)
        return list(merged.split(1)), len(parts)  # (1, K) each

    def _encode(self, images: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """The CNN's features of ``images (N, 3, S, S)`` in passes of at most ``chunk_size`` images, one
        ``(n, F)`` tensor per pass. A temporally shifted CNN reads each image's neighbours in its clip
        (``lengths (C,)``), so its passes hold whole clips, as predict's do: a clip longer than the chunk
        runs alone."""
        dtype = self.predictor.compute_dtype
        if not is_shifted(self.predictor.model.encoder):
            return [encode_batch(self._net, part, dtype) for part in images.split(self.chunk_size)]
        passes: list[list[int]] = [[]]
        for n in lengths.tolist():
            if passes[-1] and sum(passes[-1]) + n > self.chunk_size:
                passes.append([])
            passes[-1].append(n)
        parts, start = [], 0
        for clips in passes:
            size = sum(clips)
            with frames_of(self._net, torch.tensor(clips), self.predictor.device):
                parts.append(encode_batch(self._net, images[start : start + size], dtype))
            start += size
        return parts

    def _fail_waiting(self, exc: Exception) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(exc)
