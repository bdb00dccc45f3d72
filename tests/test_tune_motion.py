"""seqvision tune's motion trials: the last stages fine-tuned with a temporal shift on cached maps, the README's
recipe first, one set of maps for all of them, a best motion trial trained again into a checkpoint that
predicts, the cache budget and the time they need, and the options they take."""

from __future__ import annotations

import optuna
import pytest
import yaml

from conftest import fast_config
from test_tune import tune_setup  # noqa: F401  (the fixture: tiny folder data, its own cache, a space file)
from seqvision.errors import ConfigError
from seqvision.tuning.deadline import Deadline
from seqvision.tuning.motion import motion_cut, motion_space, recipe_cut
from seqvision.tuning.space import Domain, load_space
from seqvision.tuning.study import TrialRun, _room_for_a_trial, _tunable, tune

SPACE = "head: [mean, lstm]\nhidden_size: [8]\nnum_layers: [1]\npool: [avg]\nbatch_size: [4]\nmax_epochs: 1\n"


@pytest.fixture
def setup(tune_setup):  # noqa: F811
    cfg, space = tune_setup
    cfg.train.diagnostics = "off"  # the best's retraining: evaluated without the order diagnostics (faster)
    space.write_text(SPACE)
    return cfg, space


def test_the_first_motion_trial_is_the_recipe_every_one_reads_one_set_of_maps_and_the_best_retrains(setup, tmp_path, monkeypatch):
    import seqvision.training.fit as fit_module
    from seqvision.data.discovery import discover
    from seqvision.inference.predictor import Predictor
    from seqvision.models.stage_maps import FrozenStages

    cfg, space = setup
    computed: list[int] = []  # images the frozen stages computed, per extraction of maps
    real = fit_module.extract_features

    def spy(samples, encoder, *args, **kwargs):
        stats = real(samples, encoder, *args, **kwargs)
        if isinstance(encoder, FrozenStages):
            computed.append(stats.images)
        return stats

    monkeypatch.setattr(fit_module, "extract_features", spy)
    lines: list[str] = []
    result = tune(cfg, tmp_path / "t", motion="only", trials=2, space_file=space, say=lines.append)
    said = [ln for ln in lines if ln.startswith("motion trials:")]
    assert len(said) == 1 and "its last 1 stage(s) fine-tuned with a temporal shift on cached maps (64x4x4" in said[0]
    first = next(ln for ln in lines if ln.startswith("trial 1/2:"))  # the README's recipe, on the run's other options
    assert "motion=True head=mean " in first and "temporal_shift=bidirectional backbone_lr=0.001" in first, first
    assert "drop_stages=0 trainable_stages=1 freeze=False augment=False" in first  # tiny_cnn's cut by the recipe's rule
    # the maps were computed once, before the first trial: both trials and the best's retraining found them all
    assert len(computed) == 4 and computed[0] > 0 and computed[1:] == [0, 0, 0], computed
    assert result.motion_trials == 2 and result.best_params["motion"] is True
    saved = yaml.safe_load(result.best_config.read_text())  # the trial's config: its cut and the space's fixed epochs
    assert saved["model"]["freeze"] is False and saved["model"]["trainable_stages"] == 1 and saved["data"]["augment"] is False
    assert saved["model"]["temporal_shift"] == result.best_params["temporal_shift"] and saved["train"]["max_epochs"] == 1
    assert result.reproduced_value == pytest.approx(result.best_value, abs=1e-6)
    predictor = Predictor.load(result.best_run / "best.ckpt", precision="32")  # best-N/: a checkpoint that predicts
    samples = discover(cfg.data.data)[:3]
    outputs = predictor.run(samples).outputs
    assert outputs.shape == (3, 2) and bool(outputs.isfinite().all())
    html = (tmp_path / "t" / "report.html").read_text()
    assert "2 motion trials" in html and "(a motion trial)" in html


def test_auto_tries_the_recipe_second_and_no_more_motion_trials_while_heads_score_better(setup, tmp_path, monkeypatch):
    import seqvision.tuning.study as study_module

    cfg, space = setup
    drawn: list[tuple[bool, str, str]] = []

    def scored(trial, trial_cfg, metric, tmp_root, **kw):  # a head scores 0.9, a motion trial 0.5: no training
        motion = not trial_cfg.model.freeze
        drawn.append((motion, trial_cfg.model.head, trial_cfg.model.temporal_shift))
        return TrialRun(0.5 if motion else 0.9, epochs=1)

    monkeypatch.setattr(study_module, "_run_trial", scored)
    lines: list[str] = []
    result = tune(cfg, tmp_path / "t", trials=6, space_file=space, say=lines.append)
    assert drawn[0] == (False, "lstm", "off")  # the run's own recipe
    assert drawn[1] == (True, "mean", "bidirectional")  # the README's motion recipe
    assert not any(motion for motion, *_ in drawn[2:]), drawn  # it lost to the heads: no more motion trials
    assert result.motion_trials == 1 and result.best_params["motion"] is False
    assert any(ln.startswith("motion trials: the whole CNN, its last 1 stage(s)") and "the first (trial 2) is the README's recipe" in ln for ln in lines)


def test_motion_maps_over_the_cache_budget_are_said_and_tune_stays_on_frozen_features(setup, tmp_path, monkeypatch):
    import seqvision.tuning.study as study_module

    cfg, space = setup
    cfg.data.cache_budget = 1e-9  # GB
    with pytest.raises(ConfigError, match=r"--motion only: the frozen stages' maps would take .*over the cache budget"):
        tune(cfg, tmp_path / "only", motion="only", trials=1, space_file=space, say=lambda _: None)
    kinds: list[bool] = []

    def recorded(trial, trial_cfg, metric, tmp_root, **kw):
        kinds.append(trial_cfg.model.freeze)
        return TrialRun(0.5, epochs=1)

    monkeypatch.setattr(study_module, "_run_trial", recorded)
    lines: list[str] = []
    result = tune(cfg, tmp_path / "t", trials=2, space_file=space, say=lines.append)
    said = [ln for ln in lines if ln.startswith("no motion trials:")]
    assert len(said) == 1 and "over the cache budget of 0.0 GB (--cache-budget); tune stays on frozen features" in said[0]
    assert kinds == [True, True] and "motion" not in result.best_params and result.motion_trials == 0


def _study(paces: dict[bool, float]):
    """A study with one finished trial of each kind in ``paces`` (kind -> seconds per epoch, 2 epochs each)."""
    study = optuna.create_study(direction="maximize")
    for motion, pace in paces.items():
        study.add_trial(optuna.trial.create_trial(
            params={"motion": motion}, distributions={"motion": optuna.distributions.CategoricalDistribution([False, True])},
            value=0.9 if motion else 0.5, intermediate_values={1: 0.5, 2: 0.9 if motion else 0.5},
            user_attrs={"seconds_per_epoch": pace, "setup_seconds": 1.0}))
    return study


@pytest.mark.parametrize("left, room, enqueued", [(3000.0, True, False), (300.0, True, True), (5.0, False, False)])
def test_the_timeout_counts_a_motion_trial_at_the_pace_of_the_motion_trials(left, room, enqueued):
    # head trials: 1 s per epoch; motion trials: 60 s. The best (the motion trial) kept for its retraining:
    # 1.25 x (3 x 60 + 6 x 1) = 232.5 s. A head trial (2 epochs) needs 3 s more, a motion trial 121 s more.
    study = _study({False: 1.0, True: 60.0})
    space = {"motion": Domain(choices=(False, True)), "max_epochs": Domain(fixed=2)}
    deadline = Deadline(left, lambda: 0.0)
    lines: list[str] = []
    assert _room_for_a_trial(study, fast_config("."), space, deadline, lines.append) is room
    waiting = [t.system_attrs.get("fixed_params") for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert waiting == ([{"motion": False}] if enqueued else [])  # only a head trial fits: the next one is a head trial
    assert room or "no new trial" in lines[0]


def test_the_recipes_cut_is_measured_from_the_stages_strides():
    assert recipe_cut("mobilenet_v2") == (12, 4)  # the README's recipe: features[0..6] kept, [3..6] learn
    assert recipe_cut("resnet18") == (2, 2) and recipe_cut("tiny_cnn") == (0, 1)  # a ResNet: layer1, layer2 learn
    assert motion_cut("tiny_cnn", drop_stages=1) == (1, 1) and motion_cut("tiny_cnn", trainable_stages=2) == (0, 2)


def test_motion_options_are_checked_at_the_boundary(tmp_path):
    heads = ["lstm", "mean"]
    lines: list[str] = []
    cfg = fast_config(".")
    cfg.model.backbone = "efficientnet_b0"  # no temporal shift
    assert "motion" not in motion_space(load_space(None, heads), cfg, "auto", lines.append)
    assert lines == ["no motion trials: backbone 'efficientnet_b0' takes no temporal shift (the ResNet family, "
                     "mobilenet_v2 and tiny_cnn do); tune stays on frozen features"]
    with pytest.raises(ConfigError, match="--motion only: backbone 'efficientnet_b0' takes no temporal shift"):
        motion_space(load_space(None, heads), cfg, "only", print)
    with pytest.raises(ConfigError, match="--motion 'sometimes': use one of auto, off, only"):
        motion_space(load_space(None, heads), fast_config("."), "sometimes", print)
    path = tmp_path / "space.yaml"
    path.write_text("temporal_shift: ['off', causal]\n")  # quoted: YAML reads a bare off as false
    assert load_space(path, heads)["temporal_shift"].choices == ("off", "causal")  # narrowed for motion trials
    with pytest.raises(ConfigError, match="'temporal_shift' is drawn in motion trials only, and --motion off has none"):
        load_space(path, heads, motion=False)
    assert "backbone_lr" not in load_space(None, heads, motion=False)
    shifted = fast_config(".")
    shifted.model.trainable_stages, shifted.model.temporal_shift = 1, "causal"
    with pytest.raises(ConfigError, match="tune draws the temporal shift itself, in its motion trials"):
        _tunable(shifted, "auto")
    shifted.model.temporal_shift = "off"
    with pytest.raises(ConfigError, match="--motion off searches heads on a frozen backbone: drop --trainable-stages"):
        _tunable(shifted, "off")
    assert _tunable(shifted, "auto").model.trainable_stages is None  # the motion trials' own, in their space


def test_cli_takes_motion_and_refuses_an_unknown_mode(capsys):
    from seqvision.cli import build_parser, main

    assert build_parser().parse_args(["tune", "--data", "D", "--out", "O"]).motion == "auto"
    assert main(["tune", "--data", "D", "--out", "O", "--motion", "sometimes"]) == 2
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err
