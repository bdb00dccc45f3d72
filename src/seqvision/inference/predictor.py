"""A trained model and its input pipeline, rebuilt from a checkpoint alone, for predict and evaluate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from seqvision.config import RunConfig
from seqvision.data.dataset import SequenceDataset, collate
from seqvision.data.samples import Sample
from seqvision.data.targets import TargetSpec
from seqvision.data.transforms import ClipTransform, Preprocessing
from seqvision.errors import CheckpointError
from seqvision.models.sequence_model import SequenceModel, build_sequence_model
from seqvision.training.checkpoint import read_checkpoint


@dataclass
class Predictions:
    sample_ids: list[str]
    outputs: torch.Tensor  # (B, K) logits (classification) or values (regression), float32
    targets: torch.Tensor | None = None  # when the samples carry targets
    skipped: list[str] = field(default_factory=list)


class Predictor:
    """Runs a :class:`SequenceModel` with the preprocessing and sampling it was trained with."""

    def __init__(self, model: SequenceModel, *, cfg: RunConfig, spec: TargetSpec, preprocessing: Preprocessing) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.spec = spec
        self.preprocessing = preprocessing

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "Predictor":
        """Rebuild from a checkpoint file alone (loaded with ``weights_only=True``)."""
        raw = read_checkpoint(path)
        meta = raw["seqvision"]
        try:
            cfg = RunConfig.from_dict(meta["config"])
            spec = TargetSpec.from_dict(meta["targets"])
            prep = Preprocessing.from_dict(meta["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: incomplete seqvision metadata ({exc})") from None
        model = build_sequence_model(cfg.model, spec.num_outputs, weights="none")  # the checkpoint has them all
        state = {k.removeprefix("model."): v for k, v in raw["state_dict"].items() if k.startswith("model.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path}: weights do not fit the model it describes ({str(exc)[:300]})") from None
        return cls(model.to(device), cfg=cfg, spec=spec, preprocessing=prep)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def dataloader(
        self, samples: list[Sample], *, batch_size: int = 8, num_workers: int = 0, on_bad_image: str | None = None, with_targets: bool = False
    ) -> DataLoader:
        d = self.cfg.data
        dataset = SequenceDataset(
            samples,
            ClipTransform(self.preprocessing, train=False),
            encode_target=self.spec.encode if with_targets else None,
            sampling=d.sampling_policy(train=False),  # as the model was evaluated in training
            on_bad_image=on_bad_image or d.on_bad_image,
            shuffle_frames=d.shuffle_frames,
            seed=self.cfg.train.seed,
        )
        return DataLoader(
            dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers, persistent_workers=False
        )

    @torch.inference_mode()
    def run(
        self, samples: list[Sample], *, batch_size: int = 8, num_workers: int = 0, on_bad_image: str | None = None, with_targets: bool = False
    ) -> Predictions:
        """Outputs for every sample (in order), batched; bad input raises or is skipped and reported."""
        if with_targets:
            self.spec.check(samples)  # unknown labels fail here, naming the sample, before any compute
        ids, outputs, targets, skipped = [], [], [], []
        loader = self.dataloader(
            samples, batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image, with_targets=with_targets
        )
        for batch in loader:
            batch.raise_errors()
            skipped.extend(batch.skipped)
            if not batch.sample_ids:
                continue
            out = batch.merge_clips(self.model(batch.images.to(self.device), batch.lengths))  # (B, K)
            ids.extend(batch.sample_ids)
            outputs.append(out.float().cpu())
            if with_targets:
                targets.append(batch.targets)
        k = self.spec.num_outputs
        return Predictions(
            ids,
            torch.cat(outputs) if outputs else torch.empty(0, k),
            torch.cat(targets) if targets else None,
            skipped,
        )

    def rows(self, predictions: Predictions) -> list[dict]:
        """One dict per sample: ``sample``, ``prediction``, then a probability (or value) per output."""
        rows = []
        if self.spec.task == "classification":
            probs = predictions.outputs.softmax(dim=-1)
            for sample_id, p in zip(predictions.sample_ids, probs):
                row = {"sample": sample_id, "prediction": self.spec.class_names[int(p.argmax())]}
                row.update({name: round(float(v), 6) for name, v in zip(self.spec.class_names, p)})
                rows.append(row)
        else:
            for sample_id, v in zip(predictions.sample_ids, predictions.outputs):
                values = [round(float(x), 6) for x in v]
                row = {"sample": sample_id, "prediction": values[0] if len(values) == 1 else values}
                row.update(dict(zip(self.spec.target_names, values)))
                rows.append(row)
        return rows
