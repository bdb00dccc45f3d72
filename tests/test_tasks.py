"""Every task shape (single-label, multi-label, regression, per-image classes and values) with every head."""

import json

import pytest
import torch

from seqvision.data.dataset import SequenceDataset, collate
from seqvision.data.discovery import discover
from seqvision.tasks import TASKS, TargetSpec
from seqvision.data.transforms import ClipTransform, Preprocessing
from seqvision.evaluation.evaluate import evaluate
from seqvision.inference.predict import predict
from seqvision.tasks import TaskLoss, task_of
from seqvision.models.temporal import available_heads
from seqvision.workflows import train_and_evaluate as train

from conftest import fast_config, write_image


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """12 samples of 2-4 images with every kind of target, one row per image."""
    root = tmp_path_factory.mktemp("tasks")
    rows = ["sample_id,path,index,label,labels,target_size,frame_label,frame_target_level"]
    for n in range(12):
        cls = "dark" if n % 2 else "bright"
        tags = ";".join(t for t, on in (("red", n % 3 == 0), ("round", n % 4 < 2)) if on)
        for t in range(2 + n % 3):
            value = 30 + 150 * (n % 2) + 10 * t
            write_image(root / f"s{n}_{t}.png", (value, 255 - value, 40 * t))
            phase = "start" if t == 0 else "later"
            rows.append(f"s{n},s{n}_{t}.png,{t},{cls},{tags},{n / 4},{phase},{value / 100}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def _spec(manifest, task):
    return TargetSpec.infer(discover(manifest, targets=["target_size"] if task == "regression" else None), task=task)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("head", available_heads())
def test_every_head_and_task_trains_a_few_steps(manifest, task, head):
    samples = discover(manifest, targets=["target_size"] if task == "regression" else None)
    spec = TargetSpec.infer(samples, task=task)
    torch.manual_seed(0)
    cfg = fast_config(manifest).model
    cfg.head = head
    cfg.d_model, cfg.nhead = 16, 2
    model = cfg.build_model(spec.num_outputs, per_step=spec.per_image)
    ds = SequenceDataset(samples, ClipTransform(Preprocessing(16, 16)), encode_target=spec.encode, per_image=spec.per_image)
    batch = collate([ds[i] for i in range(6)])
    loss_fn = TaskLoss(task_of(spec))
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        out = model(batch.images, batch.lengths)
        expected_rows = int(batch.lengths.sum()) if spec.per_image else 6
        assert out.shape == (expected_rows, spec.num_outputs)
        loss = loss_fn(out, batch.targets)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_end_to_end_train_evaluate_predict(manifest, tmp_path, task):
    cfg = fast_config(manifest, max_epochs=2)
    cfg.data.task = task
    cfg.data.targets = ["target_size"] if task == "regression" else None
    cfg.train.class_weights = "balanced" if task in ("classification", "multilabel", "frame_classification") else None
    result = train(cfg, tmp_path / "run", progress=False)
    metrics = result.val_metrics
    key = {"classification": "accuracy", "multilabel": "mAP", "regression": "mae", "frame_classification": "accuracy",
           "frame_regression": "mae"}[task]
    assert key in metrics
    if task.startswith("frame_"):
        assert metrics["num_images"] > metrics["num_samples"]
    rows, _ = predict(result.best_checkpoint, [manifest])
    if task.startswith("frame_"):
        assert len(rows) == sum(2 + n % 3 for n in range(12)) and {"sample", "image", "prediction"} <= set(rows[0])
    else:
        assert len(rows) == 12
    if task == "multilabel":
        meta = torch.load(result.best_checkpoint, weights_only=True)["seqvision"]
        assert len(meta["thresholds"]) == 2 and set(rows[0]) == {"sample", "prediction", "red", "round"}
        assert all(set(filter(None, r["prediction"].split(";"))) <= {"red", "round"} for r in rows)
    ev = evaluate(result.best_checkpoint, manifest, tmp_path / "ev")
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())[key] == ev.metrics[key]
    # diagnostics follow the task: its own headline metric and change measure on every variant
    d = ev.metrics["diagnostics"]
    headline = {"mAP": "exact_match"}.get(key, key)
    assert d["metric"] == headline and d["normal"] == pytest.approx(ev.metrics[headline])
    assert d["lower_is_better"] == (task in ("regression", "frame_regression"))  # the task's rule, recorded
    assert d["change"] == ("mean_abs_change" if task in ("regression", "frame_regression") else "changed")
    for variant in ("shuffled", "reversed", "middle", "mirrored"):
        assert headline in d[variant] and d["change"] in d[variant]
    assert d["findings"]


def test_multilabel_labels_column_and_thresholds(manifest):
    spec = _spec(manifest, "auto")
    assert spec.task == "frame_classification"  # per-image columns win the automatic choice
    multi = _spec(manifest, "multilabel")
    assert multi.class_names == ["red", "round"]
    sample = discover(manifest)[0]  # s0: red and round
    assert multi.encode(sample).tolist() == [1.0, 1.0]
    from seqvision.tasks.metrics import best_thresholds

    probs = torch.tensor([[0.9, 0.2], [0.6, 0.1], [0.3, 0.8]])
    truth = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    thresholds = best_thresholds(probs, truth)
    assert 0.3 < thresholds[0] <= 0.6 and 0.2 < thresholds[1] <= 0.8


def test_per_image_targets_follow_the_sampled_frames(manifest):
    from seqvision.data.sampling import SamplingPolicy

    samples = discover(manifest)
    spec = TargetSpec.infer(samples, task="frame_classification")
    ds = SequenceDataset(samples, ClipTransform(Preprocessing(16, 16)), encode_target=spec.encode, per_image=True,
                         sampling=SamplingPolicy("uniform", num_frames=2))
    item = ds[2]  # 4 images; uniform 2 -> images 0 and 3: 'start', 'later'
    assert item["frame_target"].tolist() == [spec.class_names.index("start"), spec.class_names.index("later")]


def test_balanced_sampler_draws_rare_classes_as_often(tmp_path):
    from seqvision.data.samples import FrameRef, Sample

    samples = [Sample(f"s{i}", [FrameRef(tmp_path / "x.png")], label="rare" if i < 2 else "common") for i in range(20)]
    weights = TargetSpec.infer(samples).sample_weights(samples)
    assert weights[:2].sum() == pytest.approx(weights[2:].sum())


def test_training_with_the_balanced_sampler(tmp_path):
    from conftest import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", per_label=4)
    cfg = fast_config(data, max_epochs=1, balanced_sampler=True)
    from seqvision.training.datamodule import SequenceDataModule, prepare_data
    from torch.utils.data import WeightedRandomSampler

    prepared = prepare_data(cfg.data, seed=0)
    dm = SequenceDataModule(prepared, cfg.data, preprocessing=Preprocessing(16, 16), batch_size=4, seed=0, augment=False,
                            balanced_sampler=True)
    assert isinstance(dm.train_dataloader().sampler, WeightedRandomSampler)
    assert train(cfg, tmp_path / "run", progress=False).val_metrics["num_samples"] > 0
