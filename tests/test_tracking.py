"""Experiment tracking (--logger): MLflow on a local SQLite store and on a server started here (for its one
test only), W&B offline (no prompt, no secrets written), a data URL's credentials kept from the trackers,
tune's trials as nested MLflow runs, and the choices checked before any work."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import make_folder_dataset, write_image
from seqvision.cli import main
from seqvision.tuning.study import tune
from test_compare import FAST
from test_data_video import write_video

MLFLOW = importlib.util.find_spec("mlflow") is not None
# tune's motion trials fine-tune the CNN (seconds each): this test is about tracking, so heads only
HEADS_ONLY = ["--motion", "off"] if "motion" in inspect.signature(tune).parameters else []
needs_mlflow = pytest.mark.skipif(not MLFLOW, reason='MLflow not installed (pip install "seqvision[mlflow]")')


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path | None:
    """An empty MLflow SQLite store, made once (creating its tables takes seconds): the tests and the server
    copy it. None without MLflow."""
    if not MLFLOW:
        return None
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("store") / "empty.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_server(tmp_path_factory, empty_store):
    """``mlflow server`` on 127.0.0.1 and a free port, started only for the test that asks for it (which
    makes its data while the server comes up, then waits for it: :func:`_wait_for_health`) and killed,
    with its workers, after it."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(empty_store, folder / "server.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (folder / "server.log").open("w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield {"uri": f"http://127.0.0.1:{port}", "process": server, "log": folder / "server.log", "artifacts": folder / "artifacts"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _run_of(out: Path) -> tuple:
    record = json.loads((out / "tracking.json").read_text())["mlflow"]
    client = _client(record["tracking_uri"])
    return client, client.get_run(record["run_id"])


def test_unknown_loggers_are_a_usage_error_and_a_missing_tracker_is_said_before_any_work(folder_data, tmp_path, monkeypatch, capsys):
    assert main(["train", "--data", str(folder_data), "--out", str(tmp_path / "a"), "--logger", "csv,neptune"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--logger" in err and "neptune" in err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["train", "--data", str(folder_data), "--out", str(tmp_path / "b"), "--logger", "csv,wandb", *FAST]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "seqvision[wandb]"' in err
    assert not (tmp_path / "b").exists()  # said before anything was written


@needs_mlflow
def test_train_logs_to_a_local_mlflow_store_beside_the_run_and_to_offline_wandb(tmp_path, empty_store, monkeypatch, capsys):
    pytest.importorskip("wandb", reason='W&B not installed (pip install "seqvision[wandb]")')
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copy(empty_store, runs / "mlflow.db")  # the default store (beside the run folder), tables made once
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is seqvision's choice, not the environment's
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-never-written")
    monkeypatch.setenv("SEQVISION_TEST_SECRET", "env-secret-never-written")
    out = runs / "a"
    assert main(["train", "--data", str(data), "--out", str(out), "--max-epochs", "2", "--logger", "csv,mlflow,wandb", *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"in sqlite:///{runs / 'mlflow.db'}" in printed and "wandb sync" in printed

    client, run = _run_of(out)
    assert run.info.status == "FINISHED" and run.info.run_name == "a"
    assert run.data.params["model.head"] == "lstm" and run.data.params["train.max_epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]  # one per epoch
    test = json.loads((out / "test" / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(test["accuracy"])
    assert run.data.metrics["test_shuffled_accuracy"] == pytest.approx(test["diagnostics"]["shuffled"]["accuracy"])
    assert "val_accuracy" in run.data.metrics
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "splits.json", "checkpoint", "test", "val"} <= top
    assert {a.path for a in client.list_artifacts(run.info.run_id, "test")} >= {"test/report.html", "test/metrics.json"}
    assert (runs / "mlartifacts").is_dir() and not (Path.cwd() / "mlruns").exists()  # artifacts beside the store
    assert (out / "logs" / "version_0" / "metrics.csv").is_file() and not (out / "tensorboard").exists()  # as asked

    offline = next((out / "wandb").glob("offline-run-*"))
    assert {"config.yaml", "best.ckpt", "test/report.html", "val/metrics.json"} <= {
        str(p.relative_to(offline / "files")) for p in (offline / "files").rglob("*") if p.is_file()}
    assert list(offline.glob("run-*.wandb"))
    for path in (out / "wandb").rglob("*"):  # neither credentials nor the environment end up in the run
        if path.is_file():
            content = path.read_bytes()
            assert b"wandb-key-never-written" not in content and b"env-secret-never-written" not in content, path
    assert not (Path.home() / ".netrc").exists()  # no login happened


@needs_mlflow
def test_a_resumed_run_goes_on_in_its_mlflow_run(tmp_path, empty_store, capsys):
    """--resume continues the MLflow run the run folder names (written when training starts, so a killed run
    names it too): one run with every epoch's metrics; a changed option is a resumed.* tag, since MLflow
    refuses to change a parameter."""
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    store = tmp_path / "store.db"
    shutil.copy(empty_store, store)
    out, common = tmp_path / "run", ["--data", str(data), "--logger", "csv,mlflow", "--mlflow-uri", f"sqlite:///{store}", *FAST]
    assert main(["train", "--out", str(out), "--max-epochs", "1", *common]) == 0
    first = json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]
    (out / "tracking.json").write_text(json.dumps({"mlflow": {  # as a killed run leaves it: its start's record
        "tracking_uri": f"sqlite:///{store}", "run_id": first}}))
    assert main(["train", "--out", str(out), "--max-epochs", "2", "--resume", *common]) == 0
    capsys.readouterr()
    client, run = _run_of(out)
    assert run.info.run_id == first and run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no second run
    assert [m.step for m in client.get_metric_history(first, "val_loss")] == [0, 1]  # both epochs, one run
    assert run.data.params["train.max_epochs"] == "1" and run.data.tags["resumed.train.max_epochs"] == "2"
    assert "test_accuracy" in run.data.metrics


SECRET_DATA = "https://user:tok3n-secret@host/clips?sig=s1g-secret"


def test_the_trackers_get_a_data_url_without_its_credentials(tmp_path):
    """The config as MLflow parameters / W&B config, and config.yaml as an artifact: no password, no token."""
    import yaml

    from seqvision.training.tracking import flat_config, log_config, log_results

    config = {"data": {"data": SECRET_DATA, "cache": "auto"}, "model": {"head": "lstm"}}
    assert flat_config(config) == {"data.data": "https://user@host/clips", "data.cache": "auto", "model.head": "lstm"}

    class Client:  # what log_results asks of MLflow's client
        tracking_uri = "https://me:pw@mlflow.example/?token=t"
        uploaded: dict[str, str] = {}

        def log_metric(self, *args):
            pass

        def log_artifact(self, run_id, path, folder=None):
            self.uploaded[f"{folder or ''}/{Path(path).name}"] = Path(path).read_text(errors="replace")

        def get_experiment(self, experiment_id):
            return type("Experiment", (), {"name": "seqvision"})()

        def get_run(self, run_id):  # a new run: no parameters yet
            return type("Run", (), {"data": type("Data", (), {"params": {}})()})()

    class MLFlowLogger:  # the name is how the trackers are told apart
        experiment, run_id, experiment_id = Client(), "r1", "e1"
        params: dict = {}

        def log_hyperparams(self, params):
            self.params.update(params)

    out = tmp_path / "run"
    (out / "test").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (out / "test" / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    logger = MLFlowLogger()
    log_config([logger], config)
    log_results([logger], out, {"test": {"accuracy": 0.5}})
    assert logger.params["data.data"] == "https://user@host/clips"
    assert yaml.safe_load(Client.uploaded["/config.yaml"])["data"]["data"] == "https://user@host/clips"
    assert "test/metrics.json" in Client.uploaded
    assert yaml.safe_load((out / "config.yaml").read_text()) == config  # the run's own copy: report reads its data
    assert json.loads((out / "tracking.json").read_text())["mlflow"]["tracking_uri"] == "https://me@mlflow.example/"


def _manifest(root: Path) -> Path:
    """A manifest of 10 samples x 3 images from 5 sources (groups); brightness tells the label."""
    rows = ["sample_id,label,path,index,group"]
    for n in range(10):
        for t in range(3):
            path = write_image(root / "img" / f"s{n}_{t}.png", 40 + 150 * (n % 2) + 5 * t)
            rows.append(f"s{n},{'ab'[n % 2]},{path.relative_to(root)},{t},g{n // 2}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


@needs_mlflow
def test_tune_logs_the_study_as_a_run_and_each_trial_nested_under_it(tmp_path, empty_store, capsys):
    pytest.importorskip("wandb", reason='W&B not installed (pip install "seqvision[wandb]")')
    manifest = _manifest(tmp_path / "data")
    shutil.copy(empty_store, tmp_path / "store.db")
    out = tmp_path / "tune"
    space = tmp_path / "space.yaml"
    space.write_text("head: [lstm, mean]\nhidden_size: [8]\nnum_layers: [1]\npool: [avg]\nbatch_size: [4]\nmax_epochs: 1\n"
                     "lr: {low: 0.001, high: 0.05, log: true}\n")
    args = ["tune", "--data", str(manifest), "--out", str(out), "--trials", "2", "--space", str(space), *HEADS_ONLY,
            "--cache", str(tmp_path / "cache"), "--logger", "mlflow,wandb", "--mlflow-uri", f"sqlite:///{tmp_path / 'store.db'}", *FAST]
    assert main(args) == 0
    client, parent = _run_of(out)
    assert parent.info.run_name == "tune tune" and parent.info.status == "FINISHED"
    assert {"best_value", "best_trial"} <= set(parent.data.metrics) and parent.data.params["tune.metric"] == "val_acc"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"report.html", "best_config.yaml"}
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = sorted(r.info.run_name for r in children if r.info.run_name.startswith("trial"))
    assert trials == ["trial 1", "trial 2"]
    for r in children:
        if r.info.run_name.startswith("trial"):
            assert r.data.tags["trial_state"] in ("complete", "pruned") and "val_acc" in r.data.metrics and "trial_value" in r.data.metrics
    best = next(r for r in children if r.info.run_name.startswith("best-"))
    assert "checkpoint" in {a.path for a in client.list_artifacts(best.info.run_id)} and "val_accuracy" in best.data.metrics
    assert "test_group_worst_accuracy" in best.data.metrics  # the manifest's groups: the worst one logged too
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2  # W&B: a run per trial (not one run for all)
    assert len(list((out / best.info.run_name / "wandb").glob("offline-run-*"))) == 1

    # compare on tune's best run and an evaluation of it, on manifest data
    best_dir = out / best.info.run_name
    assert main(["evaluate", str(best_dir / "best.ckpt"), "--data", str(manifest), "--out", str(tmp_path / "ev"), "--per-group"]) == 0
    capsys.readouterr()
    assert main(["compare", str(best_dir), str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    worst = json.loads((best_dir / "test" / "metrics.json").read_text())
    assert "2 classification runs" in out and f"{worst['group_worst_accuracy']:.4f} ({next(iter(worst['per_group']))})" in out


SERVER_START_S = 90.0  # a bound for a loaded CI machine, so a server that never comes up fails clearly; not a speed target


def _wait_for_health(server: dict, timeout: float = SERVER_START_S) -> None:
    """Until the server answers ``/health``; a clear failure, with its log, if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server["process"].poll() is not None:
            pytest.fail(f"mlflow server exited (code {server['process'].returncode}) before answering; its log:\n"
                        f"{server['log'].read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(server["uri"] + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server at {server['uri']} did not answer /health within {timeout:.0f} s; its log:\n"
                f"{server['log'].read_text()[-2000:]}")


@needs_mlflow
def test_train_on_videos_logs_to_an_mlflow_server(mlflow_server, tmp_path, capsys):
    data = tmp_path / "videos"
    for label, start in (("a", 0), ("b", 1)):
        for i in range(3):
            (data / label).mkdir(parents=True, exist_ok=True)
            write_video(data / label / f"v{i}.mp4", frames=6 + i, size=16, gop=2 + start)
    _wait_for_health(mlflow_server)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--num-frames", "4", "--max-epochs", "1", "--logger", "csv,mlflow",
            "--mlflow-uri", mlflow_server["uri"], "--experiment", "videos", *FAST]
    assert main(args) == 0
    assert f"in {mlflow_server['uri']}" in capsys.readouterr().out
    client, run = _run_of(out)
    assert client.get_experiment(run.info.experiment_id).name == "videos" and run.info.status == "FINISHED"
    assert "val_acc" in run.data.metrics and "val_accuracy" in run.data.metrics
    assert "checkpoint/best.ckpt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert list(mlflow_server["artifacts"].rglob("best.ckpt"))  # uploaded through the server to its store
    # (compare reads only the run folder's files, whatever the data: test_compare and the tune test above cover it)
