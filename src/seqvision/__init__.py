"""seqvision: learn from samples made of several images (CNN features -> LSTM -> task head).

The public API is re-exported here lazily, so ``import seqvision`` (and ``seqvision --help``) stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "seqvision.config",
    "DataConfig": "seqvision.config",
    "ModelConfig": "seqvision.config",
    "TrainConfig": "seqvision.config",
    "resolve_config": "seqvision.config",
    "SeqVisionError": "seqvision.errors",
    "DataError": "seqvision.errors",
    "ConfigError": "seqvision.errors",
    "CheckpointError": "seqvision.errors",
    "discover": "seqvision.data.discovery",
    "Sample": "seqvision.data.samples",
    "FrameRef": "seqvision.data.samples",
    "build_backbone": "seqvision.models.backbones",
    "register_backbone": "seqvision.models.backbones",
    "SequenceModel": "seqvision.models.sequence_model",
    "build_sequence_model": "seqvision.models.sequence_model",
    "train": "seqvision.workflows:train_and_evaluate",
    "train_and_evaluate": "seqvision.workflows",
    "evaluate": "seqvision.workflows",
    "report": "seqvision.workflows",
    "Predictor": "seqvision.inference.predictor",
    "predict": "seqvision.workflows",
    "run_demo": "seqvision.demo",
    "extract": "seqvision.workflows",
    "extract_features": "seqvision.features.extract",
    "FeatureStore": "seqvision.features.cache",
    "CacheKey": "seqvision.features.cache",
    "cache_info": "seqvision.features.cache",
    "cache_clear": "seqvision.features.cache",
    "Stream": "seqvision.streaming.stream",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:  # "module" (the same name there) or "module:attribute"
        module, _, attribute = _EXPORTS[name].partition(":")
        return getattr(importlib.import_module(module), attribute or name)
    raise AttributeError(f"module 'seqvision' has no attribute {name!r}")
