"""Long samples in bounded memory: every clip cut into pieces of at most ``size`` images at load time.

Inference never needs a whole sample's pixels at once: the CNN turns each image into a feature vector
and only the vectors go on to the temporal head. :class:`PieceDataset` plans each sample's clips in the
main process (frame indices only: no pixel is read), cuts them into pieces of at most ``size`` images,
and loads one piece per item, so a DataLoader worker holds a few pieces of decoded frames, never a
whole 90,000-frame video. :func:`piece_batches` packs consecutive pieces into CNN passes of at most
``size`` images; the caller encodes each pass and assembles the features of a sample as its pieces
arrive (in order: a DataLoader keeps the order of its batches).

Only evaluation-time loading is cut: its transform is per image (resize and centre crop), so a piece
gives exactly the images the whole clip would. Training augmentation draws one crop per clip and needs
all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset

from seqvision.data.dataset import SequenceDataset
from seqvision.errors import DataError


@dataclass(frozen=True)
class Piece:
    """Frames ``frames`` (indices into the sample) of clip ``clip`` of sample ``sample``."""

    sample: int  # index into the dataset's samples
    clip: int  # which clip of the sample (-1: the sample could not be planned; ``error`` says why)
    frames: tuple[int, ...]
    last: bool  # the sample's last piece: once it is loaded, the sample is complete
    error: str | None = None  # from planning (a video whose headers cannot be read)


def plan_pieces(base: SequenceDataset, size: int, *, whole_clips: bool = False) -> tuple[list[Piece], list[list[list[int]]]]:
    """Every sample's clips (frame indices, as ``base`` samples them for evaluation) cut into pieces of
    at most ``size`` frames, in sample order; and the clips themselves. A sample that cannot be planned
    gets one piece carrying its error, so it is reported in its place. ``whole_clips``: a clip is never
    cut (a CNN with a temporal shift reads each image's neighbours), so a piece may exceed ``size``."""
    if size < 1:
        raise ValueError(f"piece size must be at least 1, got {size}")
    pieces: list[Piece] = []
    plans: list[list[list[int]]] = []
    for index, sample in enumerate(base.samples):
        try:
            if sample.video is not None:
                info = base.video_info(index)
                clips = base.clips(index, info.num_frames, source_fps=info.fps)
            else:
                clips = base.clips(index, len(sample.frames))
        except DataError as exc:
            plans.append([])
            pieces.append(Piece(index, -1, (), True, error=f"sample {sample.id!r}: {exc}"))
            continue
        plans.append(clips)
        mine = [
            Piece(index, c, tuple(clip[at : at + step]), False)
            for c, clip in enumerate(clips) for step in [len(clip) if whole_clips else size]
            for at in range(0, len(clip), max(step, 1))
        ] or [Piece(index, 0, (), False)]  # no frame at all: one empty piece, reported as such
        mine[-1] = replace(mine[-1], last=True)
        pieces.extend(mine)
    return pieces, plans


def piece_batches(pieces: list[Piece], size: int) -> list[list[int]]:
    """Consecutive pieces packed into lists whose frames add up to at most ``size`` (a piece is never
    split; each list has at least one piece): one CNN pass each."""
    batches: list[list[int]] = []
    current: list[int] = []
    count = 0
    for i, piece in enumerate(pieces):
        n = len(piece.frames)
        if current and count + n > size:
            batches.append(current)
            current, count = [], 0
        current.append(i)
        count += n
    if current:
        batches.append(current)
    return batches


class PieceDataset(Dataset):
    """Item ``i``: piece ``i`` of :func:`plan_pieces` loaded from ``base``'s source (pixels, for the CNN):
    ``{"piece", "images" (n, 3, S, S) or None, "kept" (frame indices that loaded), "skipped", "error"}``.
    Errors travel in the item, as in :class:`SequenceDataset`, and are raised in the main process."""

    def __init__(self, base: SequenceDataset, size: int, *, whole_clips: bool = False) -> None:
        if base.train:
            raise ValueError("pieces are for evaluation: training augmentation draws one crop per whole clip")
        if base.source.carries != "pixels":
            raise ValueError("pieces are for pixels: cached features are read whole (they are small)")
        self.base = base
        self.pieces, self.plans = plan_pieces(base, size, whole_clips=whole_clips)
        self.notes = sorted(base.notes)  # planning facts (e.g. a sample shorter than --num-frames)
        base.notes.clear()

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, i: int) -> dict:
        piece = self.pieces[i]
        item: dict = {"piece": i, "images": None, "kept": [], "skipped": [], "error": None}
        if piece.error is not None:
            self.base.bad_frame(item, piece.error)
            return item
        if not piece.frames:
            return item
        sample = self.base.samples[piece.sample]
        if sample.video is None:
            images, kept = self.base.load_clip(piece.sample, list(piece.frames), item)
            item["images"], item["kept"] = images, [piece.frames[k] for k in kept]
            return item
        try:
            info = self.base.video_info(piece.sample)
        except DataError as exc:
            self.base.bad_frame(item, f"sample {sample.id!r}: {exc}")
            return item
        # a piece past the end of a truncated file seeks back to the last key frame there and repeats the
        # last decodable frame, as one read of the whole clip does (tested with a cut Matroska file)
        loaded = self.base.source.video_clips(self.base, piece.sample, [list(piece.frames)], info, item)
        if loaded is not None:
            item["images"], item["kept"] = loaded[0], list(piece.frames)
        return item


def collate_pieces(items: list[dict]) -> list[dict]:
    """A DataLoader batch of pieces stays a list: the caller concatenates the images for one CNN pass."""
    return items


def concat_images(items: list[dict]) -> torch.Tensor | None:
    """The images of a batch of pieces, piece after piece ``(n, 3, S, S)``; None when there is none."""
    images = [it["images"] for it in items if it["images"] is not None]
    return torch.cat(images) if images else None
