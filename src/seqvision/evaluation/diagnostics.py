"""Does order matter here? The same model on variants of each sample: shuffled, reversed, one image, mirrored.

Shuffled (a seeded order per sample, averaged over a few draws), reversed and middle-image variants reuse
the per-image features of the evaluation itself (the cache's, or the CNN's one pass): only the temporal
and task heads run again. The mirrored variant flips every image left-right, so the CNN runs once more.
Each variant gets the task's headline metric and how many predictions it changed; findings put the
comparison in words (which default to keep, which head to try).
"""

from __future__ import annotations

import math
import random

import torch

from seqvision.errors import ConfigError
from seqvision.models.temporal_shift import is_shifted

DRAWS = 3  # shuffled orders per sample, averaged
MODES = ("auto", "off", "fast", "full")
# `auto` mirrors (one more CNN pass over the split's images) up to this many images, else runs `fast`:
# the mirror costs what the evaluation itself cost, and a frozen run's evaluation reads the cache instead
FULL_UP_TO_IMAGES = 2000


def resolve_mode(mode: str, num_images: int | None = None) -> str:
    """``auto`` -> ``full`` when the split's images are at most ``FULL_UP_TO_IMAGES``, else ``fast``
    (no mirror); ``num_images`` None: not known yet (``auto`` stays ``auto``)."""
    if mode not in MODES:
        raise ConfigError(f"--diagnostics {mode!r}: use {', '.join(MODES)}")
    if mode == "auto" and num_images is not None:
        return "full" if num_images <= FULL_UP_TO_IMAGES else "fast"
    return mode


@torch.inference_mode()
def variant_outputs(predictor, preds, variant: str, *, seed: int = 0, batch_clips: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs when each clip's features are ``shuffled``, ``reversed`` or reduced to the
    ``middle`` image: ``(rows, outputs)``, the output rows evaluated (all, or the middle images of a
    per-image task) and their ``(R, K)`` outputs, aligned with ``preds.outputs[rows]``."""
    per_image = predictor.spec.per_image
    rng = random.Random(seed)
    jobs = []  # (row, features of the variant, where each output goes among the clip's rows)
    for row, features in preds.clips:
        t = len(features)
        if variant == "middle":
            order = [t // 2]
        elif variant == "reversed":
            order = list(range(t - 1, -1, -1))
        else:
            order = list(range(t))
            rng.shuffle(order)
        jobs.append((row, features[order], order))
    model, device = predictor.model, predictor.device
    k = predictor.spec.num_outputs
    if per_image:
        rows = torch.tensor([row + order[0] for row, _, order in jobs] if variant == "middle"
                            else list(range(len(preds.sample_ids))))
        out = torch.zeros(len(preds.sample_ids), k)
    else:
        rows = torch.arange(len(preds.sample_ids))
        out, counts = torch.zeros(len(preds.sample_ids), k), torch.zeros(len(preds.sample_ids))
    for at in range(0, len(jobs), batch_clips):
        chunk = jobs[at : at + batch_clips]
        lengths = torch.tensor([len(f) for _, f, _ in chunk])
        result = model.forward_features(torch.cat([f for _, f, _ in chunk]).to(device), lengths).float().cpu()
        if per_image:  # (N, K): put each image's output back on the row of the image it came from
            for (row, _, order), part in zip(chunk, result.split(lengths.tolist())):
                out[torch.tensor(order) + row] = part
        else:  # (C, K): clips of one sample are averaged, as the evaluation does
            for (row, _, _), part in zip(chunk, result):
                out[row] += part
                counts[row] += 1
    if not per_image:
        out = out / counts.clamp_min(1)[:, None]
    return rows, out[rows]


def changed(predictor, before: torch.Tensor, after: torch.Tensor) -> tuple[str, float]:
    """How much a variant moved the predictions: the share of changed decisions (classes), or the mean
    absolute change of the values (regression)."""
    return predictor.task.changed(before, after)


REORDERED = ("shuffled", "reversed", "middle")  # the variants made of the evaluation's own per-image features
SHIFTED_NOTE = ("shuffled, reversed and middle-image variants not computed: with --temporal-shift the CNN's features "
                "of an image depend on its neighbours, so they would need the CNN on reordered images")


def diagnose(predictor, preds, metrics_of, *, mirrored=None, seed: int = 0) -> dict:
    """``{variant: {metric, changed}}`` for shuffled, reversed, middle (and mirrored when given), and
    ``findings`` in words. ``metrics_of(outputs, targets, ids)`` computes the task's metrics.

    A model with a temporal shift gets no reordered variant (its per-image features were computed with
    their neighbours, so reordering them would not be the model on reordered images): only the mirrored
    one, and a finding that says why."""
    task = predictor.task
    key = task.headline[0]
    ids = preds.sample_ids
    # the task's rule for its headline figure, kept with the figures (the findings read it from here)
    out: dict = {"metric": key, "lower_is_better": task.lower_is_better, "normal": metrics_of(preds.outputs, preds.targets, ids)[key]}
    name = task.changed(preds.outputs[:0], preds.outputs[:0])[0]
    shifted = is_shifted(predictor.model.encoder)
    for variant in () if shifted else REORDERED:
        draws = DRAWS if variant == "shuffled" else 1
        values, moves = [], []
        for draw in range(draws):
            rows, outputs = variant_outputs(predictor, preds, variant, seed=seed * 1000 + draw)
            values.append(metrics_of(outputs, preds.targets[rows], [ids[i] for i in rows])[key])
            name, move = changed(predictor, preds.outputs[rows], outputs)
            moves.append(move)
        out[variant] = {key: sum(values) / draws, name: sum(moves) / draws}
        if draws > 1:
            out[variant]["draws"] = draws
        if len(rows) != len(ids):  # per-image tasks, middle image: compare with the model on those images
            out[variant]["normal"] = metrics_of(preds.outputs[rows], preds.targets[rows], [ids[i] for i in rows])[key]
    out["change"] = name  # the task's measure of how far a variant moved the predictions (Task.changed)
    if mirrored is not None:
        name, move = changed(predictor, preds.outputs, mirrored.outputs)
        out["mirrored"] = {key: metrics_of(mirrored.outputs, preds.targets, ids)[key], name: move}
    out["findings"] = findings(out, hflip=predictor.cfg.data.hflip, n=len(ids))
    if shifted:
        out["findings"].insert(0, SHIFTED_NOTE)
    return out


def findings(d: dict, *, hflip: bool, n: int) -> list[str]:
    """Plain-language reading of the variants, with the noise of ``n`` evaluated predictions in mind: a
    variant matters when its metric moves beyond ``margin`` (two standard errors of an accuracy over ``n``,
    at least 0.05; for an error metric, 10 % of it) or it changes at least 20 % of the predictions; it is
    ignored when it changes at most 2 % of them and moves the metric by less than half the margin.
    ``d``: :func:`diagnose`'s figures, with the task's ``lower_is_better`` and ``change`` measure."""
    key, normal = d["metric"], d["normal"]
    lower = d["lower_is_better"]  # the task's rule for its headline metric (an error, or a score)
    move_key = d["change"]
    share = move_key == "changed"  # the move is a share of changed decisions (classes), not a size (values)
    margin = 0.1 * abs(normal) if lower else max(0.05, 2 * math.sqrt(max(normal * (1 - normal), 0.01) / max(n, 1)))
    worse = (lambda v: v - normal) if lower else (lambda v: normal - v)  # > 0: the variant does worse

    def matters(v: dict) -> bool:
        return worse(v[key]) >= margin or (share and v[move_key] >= 0.2)

    def ignored(v: dict) -> bool:
        return abs(worse(v[key])) < margin / 2 and (not share or v[move_key] <= 0.02)

    def moved(v: dict) -> str:
        return f"changes {100 * v[move_key]:.0f}% of predictions" if share else f"moves predictions by {v[move_key]:.3g} on average"

    say = []
    if "shuffled" not in d:  # a model whose CNN reads neighbours: only the mirrored variant (see diagnose)
        d = {**d, **{v: None for v in REORDERED}}
    s = d["shuffled"]
    if s is None:
        pass
    elif matters(s):
        say.append(f"order matters: {key} {normal:.2f} -> {s[key]:.2f} when each sample's images are shuffled ({moved(s)})")
    elif ignored(s):
        say.append(f"order is ignored: shuffling {moved(s)} — an order-free head (--head mean) may do as well")
    else:
        say.append(f"order matters little here: shuffling {moved(s)} ({key} {normal:.2f} -> {s[key]:.2f}, within noise)")
    r = d["reversed"]
    if r is not None and matters(r):
        say.append(f"the direction of time matters: {key} {normal:.2f} -> {r[key]:.2f} when the images are reversed")
    m = d["middle"]
    base = m.get("normal", normal) if m else normal  # per-image tasks: the full sequence's metric on the middle images
    if m is None:
        pass
    elif (m[key] - base if lower else base - m[key]) < margin:
        say.append(f"one image does about as well: {key} {m[key]:.2f} from the middle image alone, {base:.2f} from all")
    else:
        say.append(f"the sequence adds to one image: {key} {m[key]:.2f} from the middle image alone, {base:.2f} from all")
    if "mirrored" in d:
        v = d["mirrored"]
        if matters(v):
            say.append(f"mirroring {moved(v)} ({key} {normal:.2f} -> {v[key]:.2f}): your labels depend on left/right — "
                       + ("turn --hflip off" if hflip else "keep --hflip off"))
        elif ignored(v):
            say.append(f"mirroring {moved(v)}: left/right does not matter here" + ("" if hflip else "; --hflip may help as augmentation"))
        else:
            say.append(f"mirroring {moved(v)} ({key} {normal:.2f} -> {v[key]:.2f}, within noise)")
    return say
