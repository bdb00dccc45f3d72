"""seqvision tune: head trials on cached features (motion trials: test_tune_motion.py), a study that continues
after a kill, pruning, a best_config.yaml that reproduces the best trial, and a space file checked before any work."""

from __future__ import annotations

import json

import lightning as L
import optuna
import pytest
import torch

from conftest import fast_config, make_folder_dataset
from seqvision.cli import main
from seqvision.errors import ConfigError
from seqvision.tuning.space import load_space
from seqvision.tuning.study import STUDY_NAME, TrialReport, _run_trial, tune

HEADS = ["attention", "gru", "lstm", "max", "mean", "transformer"]
SPACE = """
head: [lstm, mean, gru]
hidden_size: [8]
num_layers: [1]
pool: [avg]
batch_size: [4]
max_epochs: 2
lr: {low: 0.001, high: 0.05, log: true}
"""


@pytest.fixture
def tune_setup(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=5)
    cfg = fast_config(data)
    cfg.data.test_fraction = 0.2
    cfg.data.cache = str(tmp_path / "cache")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return cfg, space


def test_tune_continues_a_killed_study_and_its_best_config_reproduces_the_best_trial(tune_setup, tmp_path):
    cfg, space = tune_setup
    lines: list[str] = []
    result = tune(cfg, tmp_path / "t", motion="off", trials=3, space_file=space, say=lines.append)
    assert result.finished == 3 and [ln.split(":")[0] for ln in lines if ln.startswith("trial")] == ["trial 1/3", "trial 2/3", "trial 3/3"]
    assert "head=lstm hidden_size=8" in lines[0]  # the first trial is the run's own recipe (lstm, lr 0.01)
    assert "lr=0.01 " in lines[0] + " "
    # the best trial trained again from best_config.yaml gives the same validation value (same seed, CPU)
    assert result.reproduced_value == pytest.approx(result.best_value, abs=1e-6)
    assert (tmp_path / "t" / "best_config.yaml").exists() and result.test_metrics is not None
    html = (tmp_path / "t" / "report.html").read_text()
    assert "Optimisation history" in html and "data:image/png;base64," in html and html.count("<tr>") >= 4
    # a run killed mid-trial leaves it RUNNING; the same command continues, the killed trial does not count
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
    study.ask()
    lines.clear()
    again = tune(cfg, tmp_path / "t", motion="off", trials=4, space_file=space, say=lines.append)
    assert again.finished == 4 and [ln.split(":")[0] for ln in lines if ln.startswith("trial")] == ["trial 5/4"]
    states = [t.state for t in optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 't' / 'study.db'}").trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and len(states) == 5
    # `seqvision train --config best_config.yaml` is that run
    assert main(["train", "--config", str(result.best_config), "--out", str(tmp_path / "again")]) == 0
    val = json.loads((tmp_path / "again" / "val" / "metrics.json").read_text())
    assert val["accuracy"] == pytest.approx(json.loads((result.best_run / "val" / "metrics.json").read_text())["accuracy"])


def test_a_study_made_with_other_options_is_not_continued(tune_setup, tmp_path):
    cfg, space = tune_setup
    tune(cfg, tmp_path / "t", motion="off", trials=1, space_file=space, say=lambda _: None)
    cfg.train.seed = 7
    with pytest.raises(ConfigError, match="holds a study made with other options"):
        tune(cfg, tmp_path / "t", motion="off", trials=2, space_file=space, say=lambda _: None)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_trial_the_pruner_stops_ends_after_its_first_epoch(tune_setup, tmp_path):
    cfg, _ = tune_setup
    cfg.model.freeze = True
    cfg.train.max_epochs = 5
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    trial = study.ask()
    run = _run_trial(trial, cfg, "val_acc", tmp_path)
    assert run.pruned_at == 1 and run.stopped_at is None and 0 <= run.value <= 1
    assert list(study.trials[0].intermediate_values) == [1]


class _Trainer:
    sanity_checking, current_epoch = False, 0

    def __init__(self, **metrics):
        self.callback_metrics = metrics


def test_a_trials_value_is_the_metric_at_the_epoch_its_monitor_picks():
    report = TrialReport(None, "val_acc", monitor="val_loss")  # recording only: never prunes
    for epoch, (acc, loss) in enumerate([(0.6, 0.9), (0.7, 0.5), (0.9, 0.6), (0.8, 0.5)]):
        trainer = _Trainer(val_acc=torch.tensor(acc), val_loss=torch.tensor(loss))
        trainer.current_epoch = epoch
        report.on_validation_end(trainer, None)
    assert report.best == pytest.approx(0.7) and report.epoch == 4  # val_loss was best (first) at epoch 2


@pytest.mark.parametrize("text,message", [
    ("{not yaml", "not valid YAML"),
    ("- a list", "expected a mapping"),
    ("hiden_size: [8]", "unknown option 'hiden_size'"),
    ("seed: [1, 2]", "'seed' cannot be searched"),
    ("lr: {low: 0.1, high: 0.01}", "lr: low and high must be numbers with low <= high"),
    ("lr: {low: 0, high: 0.1, log: true}", "a log range needs low > 0"),
    ("lr: {min: 0, max: 1}", "a range is {low: L, high: H}"),
    ("dropout: [0.1, 1.5]", "dropout: 1.5 is not a value it takes"),
    ("head: [lstm, tcn]", "head: 'tcn' is not a value it takes .*not one of attention, gru"),
    ("batch_size: []", "an empty list of choices"),
    ("lr: {low: 0.0001, high: 0.01, log: true, step: 0.0001}", "lr: .*step"),
    ("max_epochs: {low: 5, high: 30, step: 0.5}", "an integer range takes a whole step of at least 1"),
    ("max_epochs: {low: 5.5, high: 30}", "max_epochs takes whole numbers"),
    ("image_size: [64, 96]", "'image_size' cannot be searched .*cached features"),
    # frame sampling is the run's: the cache holds its frames (a video's other frames would miss it)
    ("num_frames: [4, 8]", "'num_frames' cannot be searched: frame sampling is fixed .*--num-frames"),
    ("num_frames: 8", "'num_frames' cannot be searched"),
    ("min_images: [1, 2]", "'min_images' cannot be searched: frame sampling is fixed"),
])
def test_a_bad_space_file_is_refused_naming_the_file_and_the_option(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_space(path, HEADS)
    assert str(path) in str(info.value)


def test_a_space_file_narrows_widens_and_fixes(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("head: [gru]\nlabel_smoothing: {low: 0.0, high: 0.2}\nmax_epochs: 3\nweight_decay: {low: 0, high: 1}\n")
    space = load_space(path, HEADS)
    assert not space["weight_decay"].integer  # 0 and 1 are YAML ints; the option takes floats
    assert space["head"].choices == ("gru",) and space["label_smoothing"].low == 0.0 and space["max_epochs"].fixed == 3
    assert space["lr"].log  # the rest of the default space stays


def test_cli_refuses_a_bad_space_before_any_work(tune_setup, tmp_path, capsys):
    cfg, _ = tune_setup
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1]")
    code = main(["tune", "--data", cfg.data.data, "--out", str(tmp_path / "t"), "--space", str(bad), "--backbone", "tiny_cnn"])
    assert code == 1 and "cannot be searched" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_a_continued_study_draws_new_trials_and_a_failing_trial_does_not_stop_the_search(tune_setup, tmp_path, monkeypatch):
    cfg, space = tune_setup
    import seqvision.tuning.study as study_module

    lines: list[str] = []
    tune(cfg, tmp_path / "t", motion="off", trials=2, space_file=space, say=lines.append)
    real = study_module._run_trial
    calls = {"n": 0}

    def diverging_once(trial, trial_cfg, metric, tmp_root, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise study_module.SeqVisionError("the training loss became NaN at step 3 (--on-nan stop)")
        return real(trial, trial_cfg, metric, tmp_root, **kw)

    monkeypatch.setattr(study_module, "_run_trial", diverging_once)
    result = tune(cfg, tmp_path / "t", motion="off", trials=4, space_file=space, say=lines.append)
    assert result.finished == 4 and any("failed (SeqVisionError: the training loss became NaN" in ln for ln in lines)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
    drawn = [tuple(sorted(t.params.items())) for t in study.trials if t.params]
    assert len(set(drawn)) == len(drawn)  # a continued study does not draw its first trials again


# --------------------------------------------------------------------------- --timeout bounds the whole command


class FakeClock:
    """Seconds that pass only as a fit sets up (``setup``) and as its epochs run: ``paces[i]`` per training
    epoch of the i-th trial run (the last pace for later ones; the best trained again at ``retrain_pace``)."""

    def __init__(self, paces: list[float], retrain_pace: float, setup: float) -> None:
        self.now, self.paces, self.retrain_pace, self.setup, self.trials = 0.0, paces, retrain_pace, setup, 0
        self.retrained: tuple[float, float] | None = None

    def __call__(self) -> float:
        return self.now

    def callback(self, pace: float):
        clock = self

        class Tick(L.Callback):
            def on_train_epoch_start(self, trainer, module):
                clock.now += pace

        return Tick()


@pytest.fixture
def fake_clock(monkeypatch):
    """The tune module's clock, made to pass only as the fake epochs say (no real time limit in a test)."""
    import types

    import seqvision.tuning.study as study_module

    def install(paces: list[float], retrain_pace: float, setup: float = 2.0) -> FakeClock:
        clock = FakeClock(paces, retrain_pace, setup)
        monkeypatch.setattr(study_module, "time", types.SimpleNamespace(monotonic=clock))
        real_fit, real_train = study_module.fit, study_module.train_and_evaluate

        def fit(cfg, out, **kw):
            clock.trials += 1
            pace = clock.paces[min(clock.trials, len(clock.paces)) - 1]
            clock.now += clock.setup
            return real_fit(cfg, out, **{**kw, "callbacks": [*kw.get("callbacks", []), clock.callback(pace)]})

        def train_and_evaluate(cfg, out, **kw):
            began = clock.now
            clock.now += clock.setup
            result = real_train(cfg, out, **{**kw, "callbacks": [*kw.get("callbacks", []), clock.callback(clock.retrain_pace)]})
            clock.retrained = (began, clock.now)
            return result

        monkeypatch.setattr(study_module, "fit", fit)
        monkeypatch.setattr(study_module, "train_and_evaluate", train_and_evaluate)
        return clock

    return install


TIMED_SPACE = "head: [lstm, mean]\nhidden_size: [8]\nnum_layers: [1]\npool: [avg]\nbatch_size: [4]\nmax_epochs: 2\n"


def test_the_timeout_stops_a_running_trial_and_keeps_the_time_to_train_the_best_again(tune_setup, tmp_path, fake_clock):
    cfg, space = tune_setup
    space.write_text(TIMED_SPACE)
    # 2 s of setup per fit; trial 1: 10 s epochs, later trials 25 s. The best's retraining is estimated at
    # 1.25 x (3 epochs x 10 s + 6 setups x 2 s) = 52.5 s
    clock = fake_clock([10.0, 25.0], retrain_pace=10.0)
    lines: list[str] = []
    result = tune(cfg, tmp_path / "t", motion="off", trials=5, timeout=110, space_file=space, say=lines.append)
    trial_lines = [ln for ln in lines if ln.startswith("trial ")]
    # trial 1 ends at 22 s; trial 2's first epoch ends at 49 s, and another 25 s would leave 36 < 52.5 s: stopped
    assert len(trial_lines) == 2 and "trial 2/5: stopped at epoch 1 by --timeout" in trial_lines[1], lines
    assert any(ln.startswith("--timeout 110 s:") and "no new trial" in ln for ln in lines), lines
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
    stopped = study.trials[1]
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.user_attrs["stopped"] == "timeout"
    assert result.best_trial == 1 and result.retrain_command is None  # a stopped trial's partial score is no result
    began, ended = clock.retrained
    assert began == 49 and ended <= 110  # the whole command within --timeout: trials and the retraining
    assert "stopped (--timeout)" in (tmp_path / "t" / "report.html").read_text()


def test_a_timeout_that_leaves_no_time_for_the_retraining_says_the_command_instead(tune_setup, tmp_path, fake_clock):
    cfg, space = tune_setup
    space.write_text(TIMED_SPACE)
    clock = fake_clock([10.0], retrain_pace=10.0)
    lines: list[str] = []
    result = tune(cfg, tmp_path / "t", motion="off", trials=5, timeout=30, space_file=space, say=lines.append)
    assert len([ln for ln in lines if ln.startswith("trial ")]) == 1 and clock.retrained is None and clock.now <= 30
    command = f"seqvision train --config {tmp_path / 't' / 'best_config.yaml'} --out {tmp_path / 't' / 'best-1'}"
    said = [ln for ln in lines if "not trained again" in ln]
    assert len(said) == 1 and said[0].endswith(f"Run: {command}") and "needs about 52.5 s" in said[0], lines
    assert result.retrain_command == command and result.test_metrics is None and result.reproduced_value != result.reproduced_value
    assert command in (tmp_path / "t" / "report.html").read_text()
    assert main(["train", "--config", str(result.best_config), "--out", str(tmp_path / "t" / "best-1")]) == 0  # the command runs


# --------------------------------------------------------------------------- failures counted per choice


def test_a_head_that_always_fails_is_counted_said_and_no_longer_drawn(tune_setup, tmp_path, monkeypatch):
    cfg, space = tune_setup
    space.write_text("head: [lstm, gru, mean]\nhidden_size: [8]\nnum_layers: [1]\npool: [avg]\nbatch_size: [4, 2]\n"
                     "max_epochs: 1\nlr: {low: 0.001, high: 0.05, log: true}\n")
    import seqvision.tuning.study as study_module

    real, ran = study_module._run_trial, []

    def gru_crashes(trial, trial_cfg, metric, tmp_root, **kw):
        ran.append(trial_cfg.model.head)
        if trial_cfg.model.head == "gru":
            raise RuntimeError("the gru head crashed")
        return real(trial, trial_cfg, metric, tmp_root, **kw)

    monkeypatch.setattr(study_module, "_run_trial", gru_crashes)
    cfg.model.head = "gru"  # the first trial is the run's own recipe: gru fails at once (one more draw of it in 11 excludes it)
    lines: list[str] = []
    result = tune(cfg, tmp_path / "t", motion="off", trials=12, space_file=space, say=lines.append)
    assert ran.count("gru") == 2 and len(ran) == 14, ran  # two failures, then never trained again; 12 trials finish
    assert result.finished == 12
    excluded = [ln for ln in lines if "not drawn again" in ln]
    assert len(excluded) == 1 and excluded[0].startswith("head=gru failed in every trial that drew it"), lines
    summary = [ln for ln in lines if ln.startswith("failed trials by choice:")]
    assert len(summary) == 1 and "head=gru 2 of 2 (excluded)" in summary[0], lines
    assert summary[0].count("(excluded)") == 1  # the batch sizes drawn with gru are not blamed
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
    skipped = [t for t in study.trials if "skipped" in t.user_attrs]
    assert all(t.params["head"] == "gru" for t in skipped)  # later draws of gru: told pruned before training
    html = (tmp_path / "t" / "report.html").read_text()
    assert "head=gru 2 of 2 (excluded)" in html and "failed: RuntimeError: the gru head crashed" in html


def test_a_value_that_only_shared_failures_with_the_culprit_is_not_excluded():
    from types import SimpleNamespace

    from seqvision.tuning.failures import excluded_choices

    def trial(state, head, batch, **attrs):
        return SimpleNamespace(state=SimpleNamespace(name=state), params={"head": head, "batch_size": batch}, user_attrs=attrs)

    crash = {"error": "RuntimeError: boom"}
    trials = [trial("COMPLETE", "lstm", 16), trial("FAIL", "tcn", 64, **crash), trial("FAIL", "tcn", 64, **crash),
              trial("FAIL", "tcn", 16, **crash), trial("FAIL", "lstm", 8)]  # the last: interrupted by a kill, no error
    assert excluded_choices(trials, ["head", "batch_size"]) == [("head", "tcn")]
    assert excluded_choices(trials[:3], ["head", "batch_size"]) == [("head", "tcn")]  # a tie: the head first
    assert excluded_choices(trials[:2], ["head", "batch_size"]) == []  # one failure is not enough
