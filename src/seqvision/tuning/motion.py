"""Motion trials of ``seqvision tune``: besides heads on a frozen backbone's cached features, trials that
fine-tune the CNN's last stages, with a temporal shift, on the cached maps of its frozen stages.

A frozen, globally pooled vector per image keeps what is in view, not how it moved: on order-heavy data
(the direction of a pan) every head trial stays at chance. The README's recipe for order that lives in
motion (:data:`RECIPE`: the CNN cut at stride 8, its last kept stages fine-tuned with the shift, a mean
head; 0.966 on the panning benchmark against 0.25 for frozen features) is what such data needs, and a
user should not have to know it exists. A motion trial costs minutes where a head trial costs a second,
so ``--motion``:

* ``auto`` (the default): the recipe is always tried, as the first motion trial (the second trial, after
  the run's own); more motion trials are drawn only while a motion trial scores at least as well as the
  best head trial. Order-free data pays one motion trial; order-heavy data gets its search.
* ``only``: every trial is a motion trial, the first the recipe. ``off``: head trials only.

Every motion trial has the same cut (``--drop-stages`` and ``--trainable-stages``
when given, else the recipe's rule, :func:`recipe_cut`), so all of them read one set of cached maps,
computed once before the first trial. They draw the shift (``temporal_shift``: off, bidirectional,
causal) and ``backbone_lr`` besides the head's options; head trials never draw those two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from seqvision.config import RunConfig
from seqvision.errors import ConfigError
from seqvision.tuning.space import MOTION, MOTION_OPTIONS, Domain

MOTION_MODES = ("auto", "off", "only")
# the README's recipe ("Order that lives in motion"), measured on benchmarks/accuracy/panning_photos.py --motion
RECIPE: dict[str, Any] = {"head": "mean", "temporal_shift": "bidirectional", "backbone_lr": 1e-3, "max_epochs": 15}
KEPT_STRIDE = 8  # the cut: the stages whose output is at stride 8 or finer are kept (a small pan survives there)
LEARNING_STRIDE = 4  # of those, the stages whose input is at stride 4 or coarser learn (the rest are cached)
PROBE_SIZE = 64  # pixels of the image that measures each stage's stride


def is_motion(trial) -> bool:
    """Whether an Optuna trial (or a trial's params) is a motion trial."""
    params = trial if isinstance(trial, dict) else trial.params
    return params.get(MOTION) is True


def motion_space(space: dict[str, Domain], cfg: RunConfig, mode: str, say: Callable[[str], None]) -> dict[str, Domain]:
    """``space`` with motion trials (``mode`` auto or only): the kind drawn first (``motion``), and the cut
    and the fine-tuning on cached maps fixed for every motion trial (``cfg``'s ``--drop-stages`` and
    ``--trainable-stages`` when given, else :func:`recipe_cut`). A backbone that cannot take them: said in
    one line, and the space without motion options (``auto``), or a :class:`ConfigError` (``only``)."""
    if mode not in MOTION_MODES:
        raise ConfigError(f"--motion {mode!r}: use one of {', '.join(MOTION_MODES)}")
    if mode == "off":
        return space
    m = cfg.model
    try:
        drop, learn = motion_cut(m.backbone, drop_stages=m.drop_stages, trainable_stages=m.trainable_stages)
    except ConfigError as exc:
        if mode == "only":
            raise ConfigError(f"--motion only: {exc}") from None
        say(f"no motion trials: {exc}; tune stays on frozen features")
        return {name: domain for name, domain in space.items() if name not in MOTION_OPTIONS}
    fixed = {"drop_stages": drop, "trainable_stages": learn, "freeze": False, "augment": False}  # augment None: on
    return {MOTION: Domain(choices=(True,) if mode == "only" else (False, True)), **space,
            **{name: Domain(fixed=value) for name, value in fixed.items()}}


def motion_cut(backbone: str, *, drop_stages: int = 0, trainable_stages: int | None = None) -> tuple[int, int]:
    """``(drop_stages, trainable_stages)`` of the motion trials: as the user set them (``drop_stages`` 0 and
    ``trainable_stages`` None: not set), the rest by :func:`recipe_cut`. :class:`ConfigError` when
    ``backbone`` takes no shift or cannot be cut between its stages."""
    from seqvision.models.temporal_shift import supports_shift

    if not supports_shift(backbone):
        raise ConfigError(f"backbone {backbone!r} takes no temporal shift (the ResNet family, mobilenet_v2 and tiny_cnn do)")
    drop, learn = recipe_cut(backbone, drop_stages=drop_stages or None)
    return drop, trainable_stages or learn


def recipe_cut(backbone: str, *, drop_stages: int | None = None) -> tuple[int, int]:
    """The recipe's cut of ``backbone``, measured from its stages' strides: drop the stages after the last
    one whose output is at stride :data:`KEPT_STRIDE` or finer (or ``drop_stages``), and fine-tune the kept
    stages whose input is at stride :data:`LEARNING_STRIDE` or coarser (at least one). MobileNetV2: 12 and 4,
    as the README's recipe; a ResNet: 2 (layer3, layer4) and 2 (layer1, layer2)."""
    from seqvision.models.backbones import build_backbone, drop_last_stages

    encoder = build_backbone(backbone, weights="none")  # random weights: only the shapes matter here
    strides, x = {}, torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE)
    with torch.no_grad():
        encoder.trunk.eval()
        for child in encoder.trunk.children():
            before = PROBE_SIZE // x.shape[-1]
            x = child(x)
            strides[id(child)] = (before, PROBE_SIZE // x.shape[-1])
    stages = encoder.stages
    if not stages or any(id(s) not in strides for s in stages):
        raise ConfigError(f"backbone {backbone!r} cannot be cut between its stages")
    if drop_stages is None:
        drop_stages = len(stages) - sum(strides[id(s)][1] <= KEPT_STRIDE for s in stages)
    _, kept = drop_last_stages(encoder.trunk, stages, drop_stages, backbone)  # refuses a cut that keeps nothing
    learning = sum(strides[id(s)][0] >= LEARNING_STRIDE for s in kept)
    return drop_stages, max(1, learning)
