"""Uploaded files -> the model's input for one request, exactly as ``seqvision predict`` would see them.

Every file is checked from its header before anything is decoded (is it an image or a video, how many
pixels, how long); then the request becomes one :class:`Sample` (images in the order they were sent:
the client's order is the order, no natural sort) and :meth:`Predictor.dataset` applies the
checkpoint's frame sampling and evaluation transform. Runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

from seqvision.data.samples import FrameRef, Sample, VideoClip
from seqvision.data.video import probe_video
from seqvision.errors import BadFileError, DataError
from seqvision.inference.predictor import Predictor
from seqvision.serving.errors import ServeError
from seqvision.serving.limits import ServeLimits
from seqvision.serving.uploads import SAMPLE_FIELD, Upload

DEFAULT_SAMPLE_ID = "upload"  # the id of an image request that names none ('sample' field)
# the CLI's advice in a bad-image error; a client of the service cannot pass a flag
_CLI_ADVICE = ". Fix or remove the file, or pass --on-bad-image skip"


@dataclass
class ModelInput:
    """One request, decoded and transformed: what the batcher runs and what the answer reports."""

    sample_id: str
    images: torch.Tensor  # (T, 3, S, S) float, every clip's images, clip after clip
    clip_lengths: list[int]  # images per clip (several with multi-clip evaluation), sum = T
    frames: list[str]  # the client's name of each image (a video frame: name@T.TTTs)
    skipped: list[str]  # bad images left out (a checkpoint trained with --on-bad-image skip)


def prepare(predictor: Predictor, uploads: list[Upload], fields: dict[str, str], limits: ServeLimits) -> ModelInput:
    """Check ``uploads`` against ``limits`` from their headers, then load them as one sample.

    Raises :class:`ServeError`: 413 over a limit, 415 not an image or a video, 422 cannot be decoded.
    """
    names = _Names(uploads)
    video = uploads[0] if uploads[0].kind == "video" else None
    sample_id = fields.get(SAMPLE_FIELD) or (video.name if video else DEFAULT_SAMPLE_ID)
    if video is not None:
        check_video(video, limits)
        sample = Sample(id=sample_id, frames=[], source="the request", video=VideoClip(video.path))
    else:
        for upload in uploads:
            check_image(upload, limits)
        sample = Sample(id=sample_id, frames=[FrameRef(u.path) for u in uploads], source="the request")
    dataset = predictor.dataset([sample])
    if video is not None:
        _check_sampled_frames(dataset, video, limits)
    item = dataset[0]
    if item["error"]:
        raise ServeError(422, names.public(item["error"].replace(_CLI_ADVICE, "")))
    skipped = [names.public(s) for s in item["skipped"]]
    if item["clip"] is None:
        raise ServeError(422, f"no readable image in the request ({'; '.join(skipped)})")
    return ModelInput(
        sample_id=sample_id, images=item["clip"], clip_lengths=list(item["clip_lengths"]),
        frames=[names.public(f) for f in item["frames"]], skipped=skipped,
    )


def check_image(upload: Upload, limits: ServeLimits) -> None:
    """415 unless Pillow knows the file's format; 413 when its header claims over ``max_pixels``.
    ``Image.open`` parses the header only: no pixel is decoded here."""
    try:
        with Image.open(upload.path) as img:
            width, height = img.size
    except Image.DecompressionBombError:  # Pillow's own guard (over ~179 M pixels) fires inside open
        raise ServeError(413, f"upload {upload.name!r}: its header claims a huge image (a decompression bomb?); "
                              f"the limit is {limits.max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ServeError(415, f"upload {upload.name!r} is not a readable image ({type(exc).__name__}); "
                              "send JPEG, PNG, BMP, WebP or TIFF files") from None
    if width * height > limits.max_pixels:
        raise ServeError(413, f"upload {upload.name!r} is {width}x{height} pixels, over the {limits.max_pixels:,}-pixel "
                              "limit per image: send it smaller")


def check_video(upload: Upload, limits: ServeLimits) -> None:
    """415 unless FFmpeg finds a video stream; 413 for frames over ``max_pixels`` or a duration over
    ``max_video_seconds``; 422 when its headers give no usable frame count. Headers only."""
    try:
        import av
    except ImportError:
        raise ServeError(415, "this server cannot read videos (PyAV is not installed): send the frames as images") from None
    try:
        container = av.open(str(upload.path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ServeError(415, f"upload {upload.name!r} is not a readable video ({type(exc).__name__})") from None
    try:
        if not container.streams.video:
            raise ServeError(415, f"upload {upload.name!r} holds no video stream")
        context = container.streams.video[0].codec_context
        width, height = context.width or 0, context.height or 0
    finally:
        container.close()
    if width * height > limits.max_pixels:
        raise ServeError(413, f"upload {upload.name!r}: frames of {width}x{height} pixels, over the "
                              f"{limits.max_pixels:,}-pixel limit: send it smaller")
    try:
        info = probe_video(upload.path)
    except BadFileError as exc:
        raise ServeError(422, f"upload {upload.name!r} {exc.reason}") from None
    seconds = info.num_frames / info.fps
    if seconds > limits.max_video_seconds:
        raise ServeError(413, f"upload {upload.name!r} lasts {seconds:.1f} s, over the {limits.max_video_seconds:g} s "
                              "limit: send a shorter clip")


def _check_sampled_frames(dataset, video: Upload, limits: ServeLimits) -> None:
    """413 when the checkpoint's frame sampling takes more than ``max_images`` frames of the video
    (``uniform`` without ``--num-frames`` takes every frame)."""
    try:
        info = dataset.video_info(0)
    except DataError as exc:
        raise ServeError(422, f"upload {video.name!r}: {exc}") from None
    taken = sum(len(clip) for clip in dataset.clips(0, info.num_frames, source_fps=info.fps))
    if taken > limits.max_images:
        raise ServeError(413, f"the model's frame sampling takes {taken} frames of upload {video.name!r}, over the "
                              f"limit of {limits.max_images} images per request: send a shorter clip")


class _Names:
    """Maps the stored copies' paths back to the client's file names in everything the answer shows
    (frame names, errors, notes): the server's folders are nobody's business."""

    def __init__(self, uploads: list[Upload]) -> None:
        # longest first, so a path is never replaced inside a longer one; the folder itself last
        self.pairs = sorted(((str(u.path), u.name) for u in uploads), key=lambda p: -len(p[0]))
        self.pairs.append((str(uploads[0].path.parent), "<upload>"))

    def public(self, text: str) -> str:
        for private, name in self.pairs:
            text = text.replace(private, name)
        return text
