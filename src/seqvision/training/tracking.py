"""Where a training run's numbers go: Lightning's own loggers, chosen by name (``--logger``).

* ``csv`` and ``tensorboard`` (the default) write into the run folder; ``report.html`` and
  ``seqvision compare`` read the CSV log's curves.
* ``mlflow``: the resolved config as parameters, each epoch's metrics, then the final val/test metrics,
  the diagnostics and the per-group worst as metrics, and the config, the evaluation folders (metrics.json,
  report.html, plots) and ``best.ckpt`` as artifacts. The store by default is a SQLite file beside the run
  folder (``<folder above the run>/mlflow.db``, artifacts in ``mlartifacts/`` next to it), so sibling runs
  share one store; ``--mlflow-uri`` names another (a server, another SQLite file). MLflow 3 refuses its old
  file store (``./mlruns``) unless told to allow it, so SQLite is the local default.
* ``wandb``: offline only (never a login prompt, nothing sent): files under ``RUN/wandb/``, uploaded later
  with ``wandb sync``. No system metadata (host, command line, environment, git) is recorded.

A tune logs each trial as an MLflow run nested under one run for the study (:class:`StudyTracker`).
Lightning and the trackers are imported only when a run builds its loggers.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from seqvision.errors import ConfigError
from seqvision.redact import redacted, without_password

log = logging.getLogger("seqvision")

LOGGER_CHOICES = ("csv", "tensorboard", "mlflow", "wandb")
DEFAULT_LOGGERS = ("csv", "tensorboard")
_PACKAGES = {"mlflow": ("mlflow", "MLflow"), "wandb": ("wandb", "Weights & Biases")}  # name -> (module, in words)
PARENT_TAG = "mlflow.parentRunId"  # what makes an MLflow run nested under another


def parse_loggers(text: str) -> tuple[str, ...]:
    """``"csv,mlflow"`` -> ``("csv", "mlflow")``: known names only, each once, in the order given."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in LOGGER_CHOICES]
    if unknown or not names:
        said = f"unknown {', '.join(unknown)}; " if unknown else ""
        raise ConfigError(f"--logger {text!r}: {said}use a comma-separated list of {', '.join(LOGGER_CHOICES)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Tracking:
    """The loggers of a run and where MLflow and W&B keep it; checked when made (unknown names, a tracker
    that is not installed), so a bad choice stops before any work."""

    loggers: tuple[str, ...] = DEFAULT_LOGGERS  # LOGGER_CHOICES, in order
    mlflow_uri: str | None = None  # None: sqlite:///<folder above the run>/mlflow.db
    experiment: str = "seqvision"  # MLflow experiment and W&B project
    # set by StudyTracker for one trial: the MLflow run it logs to (made nested beforehand) and its W&B group
    run_id: str | None = None
    group: str | None = None
    wandb_dir: Path | None = None  # where W&B keeps its offline runs (default: the run folder; a trial's is temporary)

    def __post_init__(self) -> None:
        object.__setattr__(self, "loggers", parse_loggers(",".join(self.loggers)))
        for name in self.loggers:
            module, words = _PACKAGES.get(name, (None, None))
            if module and importlib.util.find_spec(module) is None:
                raise ConfigError(f'--logger {name} needs {words}, which is not installed: pip install "seqvision[{name}]"')

    def uses(self, name: str) -> bool:
        return name in self.loggers

    def mlflow_store(self, out: Path) -> tuple[str, str | None]:
        """``(tracking URI, artifact location for a new experiment)``: a SQLite file and an artifact folder
        beside the run folder by default; a SQLite URI keeps artifacts beside its file; a server decides."""
        if self.mlflow_uri is None:
            folder = Path(out).resolve().parent
            return f"sqlite:///{folder / 'mlflow.db'}", (folder / "mlartifacts").as_uri()
        if self.mlflow_uri.startswith("sqlite:///"):
            db = Path(self.mlflow_uri.removeprefix("sqlite:///"))
            return self.mlflow_uri, (db.resolve().parent / "mlartifacts").as_uri()
        return self.mlflow_uri, None

    def build(self, out: Path, *, run_name: str | None = None, resume: bool = False) -> list[Any]:
        """Lightning loggers for a run writing into ``out`` (MLflow and W&B runs named ``run_name``,
        default the folder's name). Versioned CSV and TensorBoard folders: a resumed run adds version_1;
        ``resume``: the MLflow run that ``out/tracking.json`` names goes on (its metrics continue)."""
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        out, name = Path(out), run_name or Path(out).resolve().name
        loggers: list[Any] = []
        for logger in self.loggers:
            if logger == "csv":
                loggers.append(CSVLogger(out, name="logs"))
            elif logger == "tensorboard":
                loggers.append(TensorBoardLogger(out, name="tensorboard"))
            elif logger == "mlflow":
                loggers.append(self._mlflow(out, name, resume))
            else:
                loggers.append(self._wandb(out, name))
        return loggers

    def _mlflow(self, out: Path, name: str, resume: bool = False):
        from lightning.pytorch.loggers import MLFlowLogger

        _quiet_mlflow()
        uri, artifacts = self.mlflow_store(out)
        run_id = self.run_id or (_previous_mlflow_run(out, uri) if resume else None)
        return MLFlowLogger(experiment_name=self.experiment, run_name=name, tracking_uri=uri, artifact_location=artifacts,
                            run_id=run_id)

    def _wandb(self, out: Path, name: str):
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        # offline: no account, no prompt, no network; no metadata: host, command line, environment, git
        settings = wandb.Settings(mode="offline", silent=True, console="off", x_disable_meta=True, x_disable_stats=True,
                                  disable_git=True, save_code=False, disable_job_creation=True)
        folder = Path(self.wandb_dir or out)
        folder.mkdir(parents=True, exist_ok=True)
        if wandb.run is not None:  # a run still open (a tune's previous trial): Lightning would log into it
            wandb.finish()
        logger = WandbLogger(name=name, project=self.experiment, save_dir=str(folder.resolve()), offline=True, group=self.group,
                             settings=settings)
        logger._wandb_init.pop("anonymous", None)  # Lightning passes None, which W&B warns about on every run
        return logger


def _previous_mlflow_run(out: Path, uri: str) -> str | None:
    """The MLflow run a resumed run in ``out`` continues: the one its ``tracking.json`` names (written when
    it started), if it is in this store and still there; else None (a new run, said in one line)."""
    saved = out / "tracking.json"
    try:
        record = json.loads(saved.read_text()).get("mlflow") or {}
    except (OSError, ValueError, AttributeError):
        return None
    run_id = record.get("run_id")
    if not run_id:
        return None
    if record.get("tracking_uri") != without_password(uri):
        log.warning("--resume: the run's MLflow run %s is in %s, not in %s: it continues in a new MLflow run",
                    run_id, record.get("tracking_uri"), without_password(uri))
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        if MlflowClient(uri).get_run(run_id).info.lifecycle_stage == "active":
            return run_id
    except MlflowException:
        pass
    log.warning("--resume: the run's MLflow run %s is no longer in %s: it continues in a new MLflow run",
                run_id, without_password(uri))
    return None


def _quiet_mlflow() -> None:
    """MLflow's INFO lines (creating the database tables, the run's URL) and Lightning's "experiment not found,
    creating it" say nothing the run does not. MLflow sets its loggers up when imported: so, after that."""
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """``{"model": {"head": "lstm"}}`` -> ``{"model.head": "lstm"}`` (lists as text): a tracker's parameters.
    A URL's password, query and fragment are left out (:func:`seqvision.redact.without_password`)."""
    out = {}
    for section, values in redacted(config).items():
        for key, value in values.items():
            out[f"{section}.{key}"] = ",".join(map(str, value)) if isinstance(value, list) else value
    return out


def log_config(loggers: list[Any], config: dict[str, Any], out: Path | None = None) -> None:
    """The resolved config as the MLflow run's parameters and the W&B run's config. A resumed MLflow run
    keeps the parameters it started with (MLflow refuses to change one): a value the resumed run changed
    (say a higher ``train.max_epochs``) is a ``resumed.<name>`` tag. With ``out``, the MLflow run is named
    in ``out/tracking.json`` at once, so ``--resume`` after a kill continues it."""
    from seqvision.io import atomic_write_text  # torch: not at import (the command line's --help reads this module)

    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    params = flat_config(config)
    for logger in _trackers(loggers):
        if type(logger).__name__ != "MLFlowLogger" or rank_zero_only.rank != 0:  # other ranks log nothing
            logger.log_hyperparams(params)
            continue
        client, run_id = logger.experiment, logger.run_id
        before = client.get_run(run_id).data.params
        logger.log_hyperparams({k: v for k, v in params.items() if k not in before})
        for key, value in params.items():
            text = str(value)[:250]  # as Lightning stores it
            if key in before and before[key] != text:
                client.set_tag(run_id, f"resumed.{key}", text)
        if out is not None:
            record = {"tracking_uri": without_password(client.tracking_uri),
                      "experiment": client.get_experiment(logger.experiment_id).name, "run_id": run_id}
            atomic_write_text(Path(out) / "tracking.json", json.dumps({"mlflow": record}, indent=2))


def final_metrics(split: str, metrics: dict) -> dict[str, float]:
    """An evaluation's scalars as tracker metrics: ``test_accuracy``, ``test_group_worst_accuracy``, and
    each diagnostics variant's figures (``test_shuffled_accuracy``, ``test_shuffled_changed``)."""
    out = {f"{split}_{k}": float(v) for k, v in metrics.items() if _scalar(v)}
    for variant, figures in (metrics.get("diagnostics") or {}).items():
        if isinstance(figures, dict):
            out.update({f"{split}_{variant}_{k}": float(v) for k, v in figures.items() if _scalar(v) and k != "draws"})
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def log_results(loggers: list[Any], out: Path, evaluations: dict[str, dict]) -> None:
    """After the evaluation of a run in ``out``: its final metrics (``evaluations``: split -> metrics) to every
    tracker; to MLflow also the config, the split, the evaluation folders and ``best.ckpt`` as artifacts;
    W&B keeps the same files in its offline run. Then the trackers' runs are closed, and the MLflow run
    is named in ``out/tracking.json``."""
    from seqvision.io import atomic_write_text  # torch: not at import (the command line's --help reads this module)

    out = Path(out)
    metrics: dict[str, float] = {}
    for split, found in evaluations.items():
        if found:
            metrics.update(final_metrics(split, found))
    record = {}
    with tempfile.TemporaryDirectory(prefix="seqvision-tracked-") as scratch:
        # (file, its name in the tracker's run, the MLflow artifact folder); config.yaml as a copy without
        # the credentials a data URL may hold (the run folder's own copy keeps them: report reads the data)
        files = [(_shareable_config(out / "config.yaml", Path(scratch)), "config.yaml", "")] if (out / "config.yaml").is_file() else []
        files += [(out / "splits.json", "splits.json", "")] if (out / "splits.json").is_file() else []
        files += [(path, f"{split}/{path.name}", split)
                  for split in evaluations for path in sorted((out / split).glob("*")) if path.is_file()]
        best = out / "best.ckpt" if (out / "best.ckpt").exists() else out / "last.ckpt"
        if best.is_file():
            files.append((best, best.name, "checkpoint"))
        for logger in _trackers(loggers):
            if type(logger).__name__ == "MLFlowLogger":
                client, run_id = logger.experiment, logger.run_id
                for name, value in metrics.items():
                    client.log_metric(run_id, name, value)
                for path, _, folder in files:
                    client.log_artifact(run_id, str(path), folder or None)
                record["mlflow"] = {"tracking_uri": without_password(client.tracking_uri),
                                    "experiment": client.get_experiment(logger.experiment_id).name, "run_id": run_id}
            else:  # W&B: the summary holds the final figures; the files go in the offline run's files/ (synced with it)
                run = logger.experiment
                run.summary.update(metrics)
                for path, name, _ in files:
                    _link_or_copy(path, Path(run.dir) / name)
                record["wandb"] = {"run_dir": str(Path(run.dir).parent), "run_id": run.id}
                run.finish()
    if record:
        atomic_write_text(out / "tracking.json", json.dumps(record, indent=2))


def _shareable_config(path: Path, scratch: Path) -> Path:
    """``path`` (a run's config.yaml), or a copy of it in ``scratch`` without the credentials of its URLs."""
    import yaml

    config = yaml.safe_load(path.read_text())
    clean = redacted(config)
    if clean == config:
        return path
    copy = scratch / path.name
    copy.write_text(yaml.safe_dump(clean, sort_keys=False))
    return copy


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no second copy of a checkpoint on disk), else a copy (another file system)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _trackers(loggers: list[Any]) -> list[Any]:
    return [lg for lg in loggers if type(lg).__name__ in ("MLFlowLogger", "WandbLogger")]


@dataclass
class StudyTracker:
    """A tune's runs in MLflow: one run for the study, each trial a run nested under it (its parameters,
    its per-epoch metrics, its value and state), the best trained again as one more nested run with all a
    train run logs. W&B (offline): each trial a run of one group. Without mlflow or wandb it does nothing."""

    tracking: Tracking | None
    out: Path
    parent_id: str | None = None
    _client: Any = field(default=None, repr=False)

    def start(self, *, metric: str, config: dict[str, Any]) -> None:
        """Open (or, for a continued study, reopen) the study's MLflow run and record what it searches."""
        if self.tracking is None or not self.tracking.uses("mlflow"):
            return
        from mlflow import MlflowClient

        from seqvision.io import atomic_write_text

        _quiet_mlflow()
        uri, artifacts = self.tracking.mlflow_store(self.out)
        self._client = MlflowClient(uri)
        experiment = self._client.get_experiment_by_name(self.tracking.experiment)
        experiment_id = (experiment.experiment_id if experiment else
                         self._client.create_experiment(self.tracking.experiment, artifact_location=artifacts))
        saved = self.out / "tracking.json"
        previous = json.loads(saved.read_text()).get("mlflow", {}).get("run_id") if saved.exists() else None
        if previous and self._exists(previous):
            self.parent_id = previous
            self._client.update_run(previous, status="RUNNING")
        else:
            self.parent_id = self._client.create_run(experiment_id, run_name=f"tune {self.out.resolve().name}").info.run_id
            self._client.log_batch(self.parent_id, params=_params({**flat_config(config), "tune.metric": metric}))
            atomic_write_text(saved, json.dumps({"mlflow": {"tracking_uri": without_password(uri), "run_id": self.parent_id}}, indent=2))

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:  # another store, or the run was deleted: a new study run
            return False

    def trial(self, name: str, params: dict[str, Any], *, folder_loggers: bool = False) -> Tracking | None:
        """The tracking of one trial: a nested MLflow run made now, with the trial's drawn options as
        parameters; W&B runs grouped by study. A trial's folder is temporary, so only MLflow and W&B log it;
        ``folder_loggers``: the CSV and TensorBoard logs too (the best trained again). None: the defaults."""
        if self.tracking is None:
            return None
        loggers = tuple(n for n in self.tracking.loggers if folder_loggers or n in _PACKAGES)
        if not loggers:
            return None
        run_id = None
        if self.parent_id is not None:
            experiment_id = self._client.get_run(self.parent_id).info.experiment_id
            run = self._client.create_run(experiment_id, run_name=name, tags={PARENT_TAG: self.parent_id})
            run_id = run.info.run_id
            self._client.log_batch(run_id, params=_params({f"trial.{k}": v for k, v in params.items()}))
        # the study's store, not one beside the trial's temporary folder
        uri = self.tracking.mlflow_store(self.out)[0] if self.tracking.uses("mlflow") else None
        return replace(self.tracking, loggers=loggers, run_id=run_id, mlflow_uri=uri, group=f"tune {self.out.resolve().name}",
                       wandb_dir=None if folder_loggers else self.out)

    def trial_end(self, tracking: Tracking | None, *, state: str, value: float | None = None, error: str | None = None) -> None:
        """A trial's outcome on its runs: its value, and ``state`` (complete, pruned, stopped, failed), as the
        nested MLflow run's metric and tag and in the W&B run's summary; both runs are closed."""
        if tracking is not None and tracking.uses("wandb"):
            import wandb

            if wandb.run is not None:
                wandb.run.summary.update({"trial_state": state, **({"trial_value": value} if value is not None else {})})
                wandb.finish()
        if tracking is None or tracking.run_id is None:
            return
        if value is not None and math.isfinite(value):
            self._client.log_metric(tracking.run_id, "trial_value", value)
        self._client.set_tag(tracking.run_id, "trial_state", state)
        if error:
            self._client.set_tag(tracking.run_id, "trial_error", error[:500])
        self._client.set_terminated(tracking.run_id, status="FAILED" if state == "failed" else "FINISHED")

    def finish(self, *, best_value: float, best_trial: int, files: list[Path], failed: bool = False) -> None:
        """The study's outcome on its run: the best value and trial, the report and best config as artifacts."""
        if self.parent_id is None:
            return
        self._client.log_metric(self.parent_id, "best_value", best_value)
        self._client.log_metric(self.parent_id, "best_trial", best_trial)
        for path in files:
            if Path(path).is_file():
                self._client.log_artifact(self.parent_id, str(path))
        self._client.set_terminated(self.parent_id, status="FAILED" if failed else "FINISHED")


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items()]
