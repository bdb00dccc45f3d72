"""The LightningModule: loss, metrics, optimizer and schedule around a plain :class:`SequenceModel`."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from seqvision.config import RunConfig
from seqvision.data.dataset import Batch
from seqvision.tasks import TargetSpec
from seqvision.data.transforms import Preprocessing
from seqvision.errors import SeqVisionError
from seqvision.io import IncrementalTensorDigest
from seqvision.models.checkpoint import checkpoint_metadata
from seqvision.models.sequence_model import SequenceModel
from seqvision.models.stage_maps import StageCut
from seqvision.models.temporal_shift import frames_of
from seqvision.tasks import TaskLoss, task_of
from seqvision.training.checkpoint import rng_state, set_rng_state


class SequenceTask(L.LightningModule):
    """Trains ``model`` for ``spec``'s task. Every checkpoint it writes carries the ``seqvision`` metadata."""

    def __init__(
        self,
        model: SequenceModel,
        *,
        cfg: RunConfig,
        spec: TargetSpec,
        preprocessing: Preprocessing,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.spec = spec
        self.preprocessing = preprocessing
        t = cfg.train
        # multi-label: per-label decision thresholds are the task's, chosen on the validation set each
        # epoch (max F1) and saved in the checkpoint, so predict uses the thresholds of the epoch it was saved at
        self.task = task_of(spec)
        self.loss_fn = TaskLoss(self.task, label_smoothing=t.label_smoothing, class_weights=class_weights, loss=t.loss)
        self.val_metrics = self.task.validation_metrics()
        self.skipped: list[str] = []  # bad images left out with --on-bad-image skip, for the end summary
        self.nan_steps_skipped = 0  # steps whose loss was NaN/inf, skipped with --on-nan skip
        self._digest = IncrementalTensorDigest()  # a frozen backbone is hashed once, not at every save
        self.decay_rule = DECAY_RULE  # which parameters weight decay applies to (see decay_groups)
        self.feature_runtime: str | None = None  # the runtime that filled the feature cache it trains on (fit sets it)
        self.maps: StageCut | None = None  # set when training reads the frozen stages' cached maps

    def forward(self, images: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(images, lengths)

    def _step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        batch.raise_errors()
        self.skipped.extend(batch.skipped)
        if not batch.sample_ids:
            return None
        if batch.carries == "features":  # (N, F) vectors from the feature cache: the frozen CNN is skipped
            outputs = self.model.forward_features(batch.images, batch.lengths)  # (C, K), C clips
        elif batch.carries == "maps":  # (N, C*h*w) cached maps of the frozen stages: only the last stages run
            with frames_of(self.model.encoder, batch.lengths, batch.images.device):  # a temporal shift's samples
                features = self.maps.features(self.model.encoder, batch.images)  # (N, F)
            outputs = self.model.forward_features(features, batch.lengths)
        else:
            outputs = self.model(batch.images, batch.lengths)  # (C, K)
        if not self.spec.per_image:  # per-image outputs (N, K) align with per-image targets already
            outputs = batch.merge_clips(outputs)  # (B, K): multi-clip evaluation averages a sample's clips
        return outputs, self.loss_fn(outputs, batch.targets)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        result = self._step(batch)
        if result is None:
            return None
        loss = result[1]
        if not torch.isfinite(loss):
            if self.cfg.train.on_nan == "skip":
                self.nan_steps_skipped += 1  # no backward, no optimizer step: the weights stay good
                return None
            raise SeqVisionError(
                f"training loss became {loss.item()} at step {self.global_step} (batch {batch.sample_ids[:3]}...); "
                "lower --lr, keep --grad-clip on, check the targets, or pass --on-nan skip. "
                "The last good checkpoint (last.ckpt) is kept"
            )
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch.sample_ids))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        result = self._step(batch)
        if result is None:
            return
        outputs, loss = result
        n = len(batch.sample_ids)
        self.log("val_loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.task.validation_update(self.val_metrics, outputs, batch.targets)
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        self.task.validation_epoch_end()

    def configure_optimizers(self) -> Any:
        t = self.cfg.train
        encoder_params = [p for p in self.model.encoder.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in self.model.encoder.parameters()}
        head_params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in encoder_ids]
        if self.decay_rule == "matrices":
            groups = decay_groups(head_params, lr=t.lr, weight_decay=t.weight_decay)
            groups += decay_groups(encoder_params, lr=t.backbone_lr, weight_decay=t.weight_decay)
        else:  # a run started before the rule, resumed: its optimizer state has one group per part
            groups = [{"params": ps, "lr": lr} for ps, lr in ((head_params, t.lr), (encoder_params, t.backbone_lr)) if ps]
        optimizer = make_adamw(groups, weight_decay=t.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(t.warmup_fraction * total)) if t.warmup_fraction > 0 else 0

        def factor(step: int) -> float:  # linear warm-up, then cosine decay to zero
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint_metadata(self.cfg.to_dict(), self.spec.to_dict(), self.preprocessing)
        frozen = {f"model.encoder.{name}" for name, t in self.model.encoder.frozen_tensors().items()
                  if not (isinstance(t, torch.nn.Parameter) and t.requires_grad)}
        meta["state_sha256"] = self._digest(checkpoint["state_dict"], stable=frozen)  # verified on every load
        meta["rng"] = rng_state()  # a resumed run continues with the very same random draws
        meta["nan_steps_skipped"] = self.nan_steps_skipped
        meta["thresholds"] = [float(t) for t in self.task.thresholds]
        meta["decay_rule"] = self.decay_rule
        meta["parameters"] = sum(p.numel() for p in self.model.parameters())  # compare's size (buffers left out)
        if self.feature_runtime is not None:  # trained on cached features: the runtime that computed them
            meta["feature_runtime"] = self.feature_runtime
        checkpoint["seqvision"] = meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("seqvision", {})
        if "rng" in meta:
            set_rng_state(meta["rng"])
        self.nan_steps_skipped = int(meta.get("nan_steps_skipped", 0))
        self.task.thresholds = list(meta.get("thresholds", self.task.thresholds))
        # runs on before configure_optimizers when resuming: keep the optimizer groups the run started with
        self.decay_rule = meta.get("decay_rule", "all")


DECAY_RULE = "matrices"  # weight decay on matrices and kernels only; "all": every parameter (before)


def decay_groups(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float) -> list[dict]:
    """Optimizer groups at ``lr``: weight decay on matrices and convolution kernels only; biases and
    normalization weights (fewer than 2 dimensions) are not pulled towards zero (nanoGPT's rule)."""
    decay = [p for p in params if p.dim() >= 2]
    keep = [p for p in params if p.dim() < 2]
    return [g for g in ({"params": decay, "lr": lr, "weight_decay": weight_decay},
                        {"params": keep, "lr": lr, "weight_decay": 0.0}) if g["params"]]


def make_adamw(groups: list[dict], *, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where the device supports it: one kernel for all parameters instead of a loop (the
    cached-feature epoch of ``benchmarks/extract_speed.py`` is mostly optimizer steps)."""
    try:
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
