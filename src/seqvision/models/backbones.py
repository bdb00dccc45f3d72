"""Image backbones: any torchvision classifier (or timm model) with its classifier removed, pooled to (N, F).

One contract for all: an :class:`ImageEncoder` maps ``(N, 3, H, W) -> (N, F)``, knows ``num_features``
and carries the :class:`Preprocessing` its weights expect, so transforms cannot drift from the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from seqvision.data.transforms import INTERPOLATIONS, Preprocessing
from seqvision.errors import ConfigError
from seqvision.models.local_weights import load_local_weights, local_preprocessing

if TYPE_CHECKING:
    from seqvision.models.temporal_shift import FrameLayout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pooling of the last feature map: global average, global max, or the average of each cell of a 2x2
# grid concatenated (4x the features; keeps coarse "where" information, e.g. left vs right).
POOLS = ("avg", "max", "grid2")

# seqvision's own backbones: name -> factory(weights-free model) returning (trunk, stages, preprocessing).
_REGISTRY: dict[str, Callable[[], tuple[nn.Module, list[nn.Module], Preprocessing]]] = {}


def register_backbone(name: str):
    """Decorator registering a backbone factory under ``name``; a duplicate name is refused."""

    def wrap(factory):
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


@register_backbone("tiny_cnn")
def _tiny_cnn() -> tuple[nn.Module, list[nn.Module], Preprocessing]:
    """A 4-block CNN (~30k parameters) for small images, quick tests and the demo; trained from scratch."""

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    stages = [block(3, 16, 1), block(16, 32, 2), block(32, 64, 2), block(64, 64, 1)]
    return nn.Sequential(*stages), stages, Preprocessing(32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def available_backbones() -> list[str]:
    """seqvision's own backbones and every torchvision classification model (timm ones as ``timm/NAME``)."""
    import torchvision

    return sorted(_REGISTRY) + sorted(torchvision.models.list_models(module=torchvision.models))


class ImageEncoder(nn.Module):
    """``(N, 3, H, W) -> (N, F)``: the trunk's feature map, pooled (and post-processed).

    ``pool``: ``avg`` or ``max`` (global, ``F = C``) or ``grid2`` (2x2 average cells, ``F = 4C``).

    ``set_trainable`` decides what learns. Frozen modules get no gradients AND stay in eval mode even
    when the model is put in training mode, so their BatchNorm statistics never move.
    """

    def __init__(
        self,
        trunk: nn.Module,
        *,
        name: str,
        pool: str = "avg",
        stages: list[nn.Module] | None = None,
        post_pool: nn.Module | None = None,
        preprocessing: Preprocessing,
        pooled: bool = False,
        trunk_pool: str = "avg",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"--pool {pool!r}: use {', '.join(POOLS[:-1])} or {POOLS[-1]}")
        if pooled and pool != trunk_pool:  # trunk_pool: the pooling a trunk that pools itself applies
            raise ConfigError(f"backbone {name!r} pools internally; only --pool {trunk_pool} is available for it")
        self.trunk = trunk
        self.post_pool = post_pool if post_pool is not None else nn.Identity()
        self.name = name
        self.dropped_stages = 0  # --drop-stages: the stages cut off the end of the named backbone (build_backbone)
        self.pool = pool
        self.pooled = pooled  # the trunk already returns (N, F)
        self.stages = list(stages or [])  # not registered twice: plain list of submodules of trunk
        self.preprocessing = preprocessing
        self.chunk_size: int | None = None  # images per backbone pass (None: the whole batch at once)
        self.checkpointing = False  # recompute chunk activations in backward instead of storing them
        # BatchNorm normalizes with its running statistics even while the rest learns (see set_frozen_norm)
        self.frozen_norm = False
        # the frozen modules, by name: a module replaced in place (Lightning's SyncBatchNorm conversion)
        # is still found, and kept in eval, under its name
        self._frozen_names: list[str] = []
        with torch.no_grad():
            was_training = trunk.training
            trunk.eval()
            probe = torch.zeros(1, 3, preprocessing.image_size, preprocessing.image_size)
            self.num_features = int(self(probe).shape[-1])
            trunk.train(was_training)
        # channels_last (NHWC) convolutions are the layout oneDNN on CPUs and cuDNN on GPUs are fastest in.
        # Parameters keep the layout through load_state_dict and .to(device); inputs follow in _encode.
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, F)``. With ``chunk_size`` the images go through in chunks; while training,
        each chunk is activation-checkpointed, so peak memory stays bounded as N grows."""
        if not self.chunk_size or images.shape[0] <= self.chunk_size:
            return self._encode(images)
        shift = getattr(self, "shift_state", None)
        if shift is not None:  # a temporal shift reads neighbours: each chunk holds whole samples
            chunks = [(images[a:b], layout) for a, b, layout in shift.chunks(self.chunk_size)]
        else:
            chunks = [(c, None) for c in images.split(self.chunk_size)]
        if self.checkpointing and torch.is_grad_enabled() and not self.fully_frozen:
            return torch.cat([self._checkpointed(c, layout) for c, layout in chunks])
        return torch.cat([self._encode(c, layout) for c, layout in chunks])

    def _checkpointed(self, chunk: torch.Tensor, layout: FrameLayout | None = None) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        calls = {"n": 0}

        def run(x: torch.Tensor) -> torch.Tensor:
            # The backward pass runs this again to rebuild the activations. BatchNorm in training mode
            # would then update its running statistics a second time: freeze them for the replay (the
            # replay still normalizes with the same batch statistics, so the gradients are exact).
            # A shifted chunk replays with its own layout: the batch's is gone by the backward pass.
            calls["n"] += 1
            if calls["n"] == 1:
                return self._encode(x, layout)
            with running_stats_frozen(self):
                return self._encode(x, layout)

        return checkpoint(run, chunk, use_reentrant=False, preserve_rng_state=True)

    def _encode(self, images: torch.Tensor, layout: FrameLayout | None = None) -> torch.Tensor:
        """One CNN pass; ``layout``: where a temporal shift finds each image's neighbours in this chunk."""
        images = images.contiguous(memory_format=torch.channels_last)  # a no-op when already NHWC
        if layout is None:
            return self.pool_features(self.trunk(images))
        with self.shift_state.using(layout):
            return self.pool_features(self.trunk(images))

    def pool_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's output ``(N, C, h, w)`` (or ``(N, F)`` when the trunk pools itself) -> ``(N, F)``."""
        if self.pooled:
            return x.flatten(1)  # (N, F)
        if self.pool == "grid2":
            x = self.post_pool(nn.functional.adaptive_avg_pool2d(x, 2))  # (N, C, 2, 2)
            return x.flatten(2).transpose(1, 2).flatten(1)  # (N, 4C): cells TL, TR, BL, BR, C values each
        x = x.amax(dim=(-2, -1), keepdim=True) if self.pool == "max" else x.mean(dim=(-2, -1), keepdim=True)
        return self.post_pool(x).flatten(1)  # (N, C, 1, 1) -> (N, F)

    def set_trainable(self, mode: str | int) -> None:
        """``"all"``: everything learns; ``"none"``: frozen; ``K``: only the last K stages learn."""
        if mode == "all":
            frozen: list[nn.Module] = []
        elif mode == "none":
            frozen = [self.trunk, self.post_pool]
        else:
            k = int(mode)
            if not self.stages:
                raise ConfigError(f"backbone {self.name!r} has no stages to fine-tune selectively; use --freeze or neither")
            if not 1 <= k <= len(self.stages):
                raise ConfigError(f"--trainable-stages {k}: backbone {self.name!r} has {len(self.stages)} stages")
            keep = {id(p) for stage in self.stages[-k:] for p in stage.parameters()}
            keep |= {id(p) for p in self.post_pool.parameters()}
            # inside a learning stage, parameter-free layers (dropout, stochastic depth) learn too: not frozen
            inside = {id(m) for stage in self.stages[-k:] for m in stage.modules()}
            frozen = [m for m in self.trunk.modules()
                      if id(m) not in inside and not any(id(p) in keep for p in m.parameters())]
        for p in self.parameters():
            p.requires_grad_(True)
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        ids = {id(m) for m in frozen}
        self._frozen_names = [name for name, m in self.named_modules() if id(m) in ids]
        self.train(self.training)

    def frozen_tensors(self) -> dict[str, torch.Tensor]:
        """The frozen modules' parameters and buffers by name (relative to this encoder): fixed while training."""
        frozen = {id(m) for top in self._frozen for m in top.modules()}  # resolved by name, now
        return {
            f"{prefix}.{name}" if prefix else name: t
            for prefix, module in self.named_modules() if id(module) in frozen
            for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        }

    @property
    def _frozen(self) -> list[nn.Module]:
        """The frozen modules as they are now (looked up by name)."""
        modules = dict(self.named_modules())
        return [modules[name] for name in self._frozen_names if name in modules]

    @property
    def fully_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        for module in self._frozen:
            module.eval()  # frozen BatchNorm keeps its running statistics
        if self.frozen_norm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def set_frozen_norm(self, frozen: bool) -> None:
        """Keep every BatchNorm layer in evaluation mode (its running statistics, never updated) while the
        rest of a fine-tuned backbone trains; its scale and shift still learn where trainable. Needed for
        weights whose BatchNorm is folded into the convolutions, and safer for small batches."""
        self.frozen_norm = frozen
        self.train(self.training)

    def has_folded_norm(self) -> bool:
        """Whether every BatchNorm layer holds the statistics of folded weights (running mean 0, variance 1,
        as in weights converted from TFLite): normalizing with batch statistics would destroy the features."""
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
        return bool(norms) and all(bool((m.running_mean == 0).all() and (m.running_var == 1).all()) for m in norms)


class running_stats_frozen:
    """Context: BatchNorm layers of ``module`` keep their running statistics (momentum 0) meanwhile."""

    def __init__(self, module: nn.Module) -> None:
        self.norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]

    def __enter__(self) -> None:
        self.saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0

    def __exit__(self, *exc) -> None:
        for m, (momentum, tracked) in zip(self.norms, self.saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


# ------------------------------------------------------------------------------------------- building


def build_backbone(name: str, *, weights: str = "imagenet", pool: str = "avg", drop_stages: int = 0) -> ImageEncoder:
    """Build an encoder by name.

    Args:
        name: ``tiny_cnn`` (seqvision's own), any torchvision classification model (``resnet18``,
            ``mobilenet_v2``, ``convnext_tiny``, ...), or ``timm/NAME`` when timm is installed.
        weights: ``imagenet`` (torchvision's default weights, downloaded or from the torch cache),
            ``none`` (random init) or a path to a local ``state_dict`` / checkpoint file.
        pool: ``avg`` or ``max`` global pooling of the last feature map, or ``grid2``: its 2x2 cells
            average-pooled and concatenated (``num_features`` = 4 x channels).
        drop_stages: remove the backbone's last N stages and pool the map of the last one kept (see
            :func:`drop_last_stages`); 0 keeps the whole backbone.
    """
    if drop_stages < 0:
        raise ConfigError(f"--drop-stages {drop_stages}: give 0 (the whole backbone) or more")
    if name in _REGISTRY:
        trunk, stages, prep = _REGISTRY[name]()
        if weights == "imagenet":
            raise ConfigError(f"backbone {name!r} has no pretrained weights; use --weights none (or a PATH)")
        cut, stages = drop_last_stages(trunk, stages, drop_stages, name)
        if weights != "none":  # loaded after the cut: a file of the whole backbone or of the cut one fits
            load_local_weights(trunk, weights, name, kept=cut if drop_stages else None, drop=drop_stages)
            prep = local_preprocessing(weights, prep)
        trunk = cut
        return _cut(ImageEncoder(trunk, name=name, pool=pool, stages=stages, preprocessing=prep), drop_stages)
    if name.startswith("timm/"):
        if drop_stages:
            raise ConfigError(f"--drop-stages {drop_stages}: not for timm backbones ({name!r}); use a torchvision "
                              "one (resnet18, mobilenet_v2, ...) or tiny_cnn, or --drop-stages 0")
        return _build_timm(name, weights=weights, pool=pool)
    return _build_torchvision(name, weights=weights, pool=pool, drop_stages=drop_stages)


def _cut(encoder: ImageEncoder, drop_stages: int) -> ImageEncoder:
    encoder.dropped_stages = drop_stages
    return encoder


def network_name(encoder: nn.Module) -> str:
    """What names the network an encoder computes: the backbone's name, and its cut (``--drop-stages``)
    when it has one. Feature cache keys, exported ONNX files and remembered runtime choices use it: a cut
    can keep every weight of the full backbone (it may drop only parameter-free layers) and still compute
    other features, so weights alone cannot tell the two apart."""
    drop = getattr(encoder, "dropped_stages", 0)
    return f"{encoder.name} without its last {drop} stages" if drop else encoder.name


def drop_last_stages(trunk: nn.Module, stages: list[nn.Module], drop: int, name: str) -> tuple[nn.Module, list[nn.Module]]:
    """``trunk`` without its last ``drop`` stages, and the stages kept.

    Why: an ImageNet CNN's last stages are built to be invariant to small translations, so their pooled
    output loses the sub-cell displacement between neighbouring frames that a motion label depends on
    (a pan of 1-8 px is under one cell at stride 16-32). Pooling an earlier stage (stride 8) keeps it where
    a temporal shift can learn it (``benchmarks/accuracy/panning_photos.py --motion``). Only trunks that are a plain
    ``nn.Sequential`` ending with their stages can be cut (ResNets, MobileNets, EfficientNets, VGG,
    tiny_cnn); the kept modules keep their ``state_dict`` keys, so pretrained weights fit them as they are.
    """
    if not drop:
        return trunk, stages
    children = list(trunk.children()) if isinstance(trunk, nn.Sequential) else []
    if not stages or len(children) < len(stages) or any(a is not b for a, b in zip(children[-drop:], stages[-drop:])):
        raise ConfigError(f"--drop-stages {drop}: backbone {name!r} cannot be cut between its stages; use a ResNet, "
                          "MobileNet, EfficientNet or tiny_cnn, or --drop-stages 0")
    if drop >= len(stages):
        raise ConfigError(f"--drop-stages {drop}: backbone {name!r} has {len(stages)} stages; keep at least one "
                          f"(--drop-stages {len(stages) - 1} at most)")
    return nn.Sequential(*children[:-drop]), stages[:-drop]


def _build_torchvision(name: str, *, weights: str, pool: str, drop_stages: int = 0) -> ImageEncoder:
    import torchvision
    from torchvision import models

    known = models.list_models(module=models)
    if name not in known:
        raise ConfigError(
            f"unknown backbone {name!r}; use tiny_cnn, a torchvision classification model "
            f"(e.g. {', '.join(k for k in known if k in ('resnet18', 'resnet50', 'mobilenet_v2', 'efficientnet_b0'))}) "
            "or timm/NAME"
        )
    model = models.get_model(name, weights=None)
    prep = Preprocessing(224, 256, IMAGENET_MEAN, IMAGENET_STD)
    if weights == "imagenet":
        enum = models.get_model_weights(name).DEFAULT
        try:
            state = enum.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:  # URLError, HTTPError, socket errors: all mean "no download here"
            raise ConfigError(
                f"cannot get ImageNet weights for {name} ({type(exc).__name__}: {exc}); the machine may be "
                f"offline and torch's cache ({torchvision.__name__} weights in ~/.cache/torch) lacks them. "
                "Pass --weights PATH (a local state_dict) or --weights none"
            ) from None
        model.load_state_dict(state)
        t = enum.transforms()
        mode = getattr(getattr(t, "interpolation", None), "value", "bilinear")  # e.g. bicubic for efficientnet_b1+
        prep = Preprocessing(int(t.crop_size[0]), int(t.resize_size[0]), tuple(t.mean), tuple(t.std),
                             interpolation=mode if mode in INTERPOLATIONS else "bilinear")
    local = weights not in ("imagenet", "none")
    if local and not drop_stages:  # the whole model, before its classifier is removed
        load_local_weights(model, weights, name)
    trunk, stages, post_pool, pooled = _headless(model, name)
    if drop_stages and (post_pool is not None or pooled):
        raise ConfigError(f"--drop-stages {drop_stages}: backbone {name!r} normalizes or pools its last stage's "
                          "output itself, which a cut backbone lacks; use a ResNet, MobileNet or EfficientNet")
    trunk, stages = drop_last_stages(trunk, stages, drop_stages, name)
    if local and drop_stages:  # after the cut: a file of the whole model or of its cut trunk fits
        load_local_weights(model, weights, name, kept=trunk, drop=drop_stages)
    if local:
        prep = local_preprocessing(weights, prep)  # its sidecar PATH.json, else ImageNet's (said in one line)
    encoder = ImageEncoder(trunk, name=name, pool=pool, stages=stages, post_pool=post_pool, preprocessing=prep, pooled=pooled)
    return _cut(encoder, drop_stages)


def _headless(model: nn.Module, name: str) -> tuple[nn.Module, list[nn.Module], nn.Module | None, bool]:
    """(trunk giving a feature map, its stages, what follows pooling, whether trunk pools itself)."""
    if hasattr(model, "layer4") and hasattr(model, "fc"):  # resnet, resnext, wide_resnet
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        return nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, *stages), stages, None, False
    if hasattr(model, "trunk_output"):  # regnet
        return nn.Sequential(model.stem, model.trunk_output), list(model.trunk_output.children()), None, False
    if name.startswith("convnext"):  # the LayerNorm of its classifier belongs to the features
        return model.features, list(model.features.children()), model.classifier[0], False
    if name.startswith("densenet"):
        return nn.Sequential(model.features, nn.ReLU()), list(model.features.children()), None, False
    if name.startswith("shufflenet"):
        stages = [model.stage2, model.stage3, model.stage4, model.conv5]
        return nn.Sequential(model.conv1, model.maxpool, *stages), stages, None, False
    if name.startswith("mnasnet"):
        return model.layers, list(model.layers.children()), None, False
    if hasattr(model, "features") and isinstance(model.features, nn.Sequential) and not name.startswith("swin"):
        return model.features, list(model.features.children()), None, False  # mobilenet, efficientnet, vgg, ...
    # Anything else (vit, swin, maxvit, ...): keep the model's own pooling, drop its last Linear.
    parent, attr = _last_linear(model, name)
    setattr(parent, attr, nn.Identity())
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        model.AuxLogits = model.aux1 = model.aux2 = None
    return model, [], None, True


def _last_linear(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    last = None
    for full_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = full_name
    if last is None:
        raise ConfigError(f"backbone {name!r}: cannot find its classifier to remove")
    parent_name, _, attr = last.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else model, attr


def _build_timm(name: str, *, weights: str, pool: str) -> ImageEncoder:
    """A timm model through timm's own contract: ``forward_features``, then ``forward_head(...,
    pre_logits=True)`` with the model's own global pooling (the class token or the mean of tokens for
    ViTs and hybrids, the average for CNNs; ``--pool max`` asks timm for max pooling), so every model
    gives ``num_features`` values per image. ``--pool grid2`` keeps a CNN's 2x2 cells (not for token models)."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"backbone {name!r} needs timm: pip install 'seqvision[timm]'") from None
    model_name = name.removeprefix("timm/")
    options = {"global_pool": {"avg": None, "max": "max", "grid2": ""}[pool]}
    try:
        model = timm.create_model(model_name, pretrained=weights == "imagenet", num_classes=0,
                                  **{k: v for k, v in options.items() if v is not None})
    except Exception as exc:
        raise ConfigError(
            f"cannot create timm model {model_name!r} with --pool {pool} ({type(exc).__name__}: {exc}); when offline "
            "pass --weights PATH or --weights none"
        ) from None
    if weights not in ("imagenet", "none"):
        load_local_weights(model, weights, name)
    cfg = model.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    resize = int(round(size / cfg.get("crop_pct", 0.875)))
    prep = Preprocessing(
        size, resize, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=cfg.get("interpolation", "bilinear") if cfg.get("interpolation") in INTERPOLATIONS else "bilinear",
    )
    if weights not in ("imagenet", "none"):
        prep = local_preprocessing(weights, prep)
    if pool == "grid2":
        with torch.no_grad():
            shape = model.eval().forward_features(torch.zeros(1, 3, size, size)).shape
        if len(shape) != 4:
            raise ConfigError(f"backbone {name!r} gives tokens, not a feature map: --pool grid2 needs a CNN; use --pool avg")
        return ImageEncoder(_TimmTrunk(model, head=False), name=name, pool=pool, preprocessing=prep)
    trunk = _TimmTrunk(model, head=True)
    return ImageEncoder(trunk, name=name, pool=pool, preprocessing=prep, pooled=True, trunk_pool=pool)


class _TimmTrunk(nn.Module):
    """``forward_features`` (a feature map), or with ``head`` also timm's pooling: ``(N, num_features)``."""

    def __init__(self, model: nn.Module, *, head: bool) -> None:
        super().__init__()
        self.model = model
        self.head = head
        if head:
            # A mark in the weights: features through timm's head differ from the plain feature map that
            # seqvision pooled before, so the cache key (a digest of the weights) and checkpoints differ
            # too, and a checkpoint of the old pooling is refused instead of predicting wrongly.
            self.register_buffer("forward_head", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)  # (N, C, h, w) for CNNs, (N, tokens, C) for ViTs
        return self.model.forward_head(features, pre_logits=True) if self.head else features
