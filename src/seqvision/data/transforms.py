"""Clip transforms: the same preprocessing for every image of a sample, one random draw per sample."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from seqvision.data.video_torchcodec import resolve_video_decoder


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """Resize -> centre crop -> normalize, as the backbone's weights expect. Stored in checkpoints."""

    image_size: int = 224  # crop size fed to the CNN
    resize_size: int = 256  # shorter side before the centre crop
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"  # of the resize: what the weights were trained with (timm: often bicubic)
    # reduced: large JPEGs decode at 1/2, 1/4 or 1/8 scale in libjpeg and video frames are scaled in FFmpeg,
    # never below the size the resize needs (``decode_size``); exact: every pixel decoded, then resized
    decode: str = "reduced"
    # what decoded the video frames' pixels: pyav | torchcodec (resolved from --video-decoder auto). Their
    # reduced frames differ by a few levels (another scaler), so the cache key names the decoder
    video_decoder: str = "pyav"

    def to_dict(self) -> dict:
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if self.interpolation == "bilinear":  # the only one before it was recorded: cache keys stay as they were
            del out["interpolation"]
        if self.decode == "exact":  # how everything was decoded before the mode existed: keys and checkpoints
            del out["decode"]  # made then keep meaning exact decoding
        if self.video_decoder == "pyav":  # the only decoder before it was recorded: keys stay as they were
            del out["video_decoder"]
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> "Preprocessing":
        return cls(
            image_size=int(raw["image_size"]),
            resize_size=int(raw["resize_size"]),
            mean=tuple(float(m) for m in raw["mean"]),
            std=tuple(float(s) for s in raw["std"]),
            interpolation=str(raw.get("interpolation", "bilinear")),
            decode=str(raw.get("decode", "exact")),  # absent: made before reduced decoding existed
            video_decoder=str(raw.get("video_decoder", "pyav")),  # absent: PyAV's pixels
        )

    @property
    def interpolation_mode(self) -> v2.InterpolationMode:
        return v2.InterpolationMode(self.interpolation)


class ClipTransform:
    """``list of (3, H, W) uint8`` -> ``(T, 3, S, S)`` float, normalized.

    In training, random resized crop and colour jitter (and, with ``hflip``, a horizontal flip) draw ONE
    set of parameters per sample and apply it to every image: torchvision's v2 transforms treat the
    leading ``T`` dimension of a stacked clip as a batch that shares the draw, so motion between frames
    is never faked. Both default augmentations keep order and direction; a flip does not (it mirrors
    the motion), so it is off unless asked for. In evaluation each image is resized (shorter side to
    ``resize_size``) and centre-cropped on its own, whatever the size of the others.
    """

    def __init__(self, prep: Preprocessing, *, train: bool = False, hflip: bool = False, mirror: bool = False) -> None:
        self.prep = prep
        self.train = train
        self.mirror = mirror  # every image flipped left-right, always (the evaluation's mirror diagnostic)
        # the smallest shorter side a decoder may reduce an image to: what the resize reads (training's
        # random crop keeps half the area at least, at 3:4, so it reads up to ~1.7x: decode 2x)
        self.decode_size = None if prep.decode == "exact" else (2 * prep.resize_size if train else prep.resize_size)
        self.mean = torch.tensor(prep.mean, dtype=torch.float32).view(-1, 1, 1)  # made once, not per image
        self.std = torch.tensor(prep.std, dtype=torch.float32).view(-1, 1, 1)
        augment: list[v2.Transform] = [
            v2.RandomResizedCrop(prep.image_size, scale=(0.5, 1.0), interpolation=prep.interpolation_mode, antialias=True),
        ]
        if hflip:
            augment.append(v2.RandomHorizontalFlip())
        augment.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02))
        self.augment = v2.Compose(augment)

    def __call__(self, frames: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: a float32 ``(T, 3, S, S)`` to write the clip into (a slice of a batch), else a new one."""
        if self.train:
            clip = self.augment(_stack_same_size(frames))  # (T, 3, S, S): one crop for the whole clip
        else:
            # each image on its own (frames of one size in one call): an image's features never depend
            # on its neighbours, so a clip loaded in pieces, or one image at a time into the feature
            # cache, gives exactly the images of the whole clip
            sizes = {f.shape[-2:] for f in frames}
            groups = [_stack_channels_last(frames)] if len(sizes) == 1 else [f[None] for f in frames]
            views = [self._evaluation_view(g) for g in groups]
            clip = views[0] if len(views) == 1 else torch.cat(views)  # (T, 3, S, S) uint8
        if self.mirror:
            clip = clip.flip(-1)
        if out is not None and (out.shape != clip.shape or out.dtype != torch.float32):
            raise ValueError(f"out must be float32 of shape {tuple(clip.shape)}, not {out.dtype} {tuple(out.shape)}")
        # to_dtype(scale) and normalize's own ops, in their order (the same floats, bit for bit), on
        # contiguous memory: on channels_last memory their per-channel broadcast runs 3-element inner loops.
        # The copy converts uint8 to float32 and changes the layout in one pass.
        direct = out is not None and out.is_contiguous()
        scaled = (out if direct else torch.empty(clip.shape, dtype=torch.float32)).copy_(clip)
        scaled.mul_(1.0 / 255)
        normalized = scaled.sub_(self.mean).div_(self.std)
        return normalized if out is None or normalized is out else out.copy_(normalized)

    def _evaluation_view(self, clip: torch.Tensor) -> torch.Tensor:
        """``(T, 3, H, W)`` uint8 -> the shorter side resized to ``resize_size``, centre crop ``image_size``."""
        clip = F.resize(clip, [self.prep.resize_size], interpolation=self.prep.interpolation_mode, antialias=True)
        return F.center_crop(clip, [self.prep.image_size, self.prep.image_size])


def _stack_channels_last(frames: list[torch.Tensor]) -> torch.Tensor:
    """Same-size ``(3, H, W)`` frames -> ``(T, 3, H, W)`` in channels_last memory, the layout the decoders
    give and the one torch's uint8 antialiased resize is fast on (``torch.stack`` would reorder it)."""
    if len(frames) == 1:
        return frames[0][None]
    return torch.stack([f.permute(1, 2, 0) for f in frames]).permute(0, 3, 1, 2)


def _stack_same_size(frames: list[torch.Tensor]) -> torch.Tensor:
    """Stack frames, resizing any whose size differs from the first (so one crop fits all)."""
    height, width = frames[0].shape[-2:]
    same = [f if f.shape[-2:] == (height, width) else F.resize(f, [height, width], antialias=True) for f in frames]
    return torch.stack(same)


def resolve_preprocessing(
    base: Preprocessing,
    *,
    image_size: int | None = None,
    resize_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    exact_decode: bool = False,
    video_decoder: str = "pyav",
) -> Preprocessing:
    """The backbone's pretrained preprocessing with the user's overrides applied.

    A new ``image_size`` keeps the pretrained resize/crop ratio (224 -> 256 becomes 112 -> 128).
    ``exact_decode``: decode every pixel (``--exact-decode``) instead of only what the resize needs.
    ``video_decoder``: ``auto`` | ``pyav`` | ``torchcodec`` (``--video-decoder``), resolved here to the one
    that will decode (:func:`~seqvision.data.video_torchcodec.resolve_video_decoder`).
    """
    size = image_size or base.image_size
    if resize_size is None:
        resize_size = base.resize_size if image_size is None else round(size * base.resize_size / base.image_size)
    return Preprocessing(
        image_size=int(size),
        resize_size=int(resize_size),
        mean=tuple(mean) if mean is not None else base.mean,
        std=tuple(std) if std is not None else base.std,
        interpolation=base.interpolation,
        decode="exact" if exact_decode else "reduced",
        video_decoder=resolve_video_decoder(video_decoder),
    )
