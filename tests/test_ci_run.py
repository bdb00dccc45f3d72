""".ci/run: a failed install stops CI, said in one line, before any test runs; scikit-video's install is
optional and says so when it fails. Run against stand-ins for python3, pip and apt-get (nothing installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CI_RUN = Path(__file__).resolve().parents[1] / ".ci" / "run"

# `python3 -m venv DIR` makes a venv whose pip prints pip's noise and a line, and fails when its arguments
# hold $FAIL_ON; its python says what it was asked to run (the import check, pytest) and succeeds
_PYTHON3 = """#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  cat > "$3/bin/pip" <<'PIP'
#!/bin/bash
echo "WARNING: Location of something"
echo "pip was asked: $*"
if [ -n "$FAIL_ON" ] && [[ " $* " == *" $FAIL_ON "* ]]; then echo "ERROR: no such package" >&2; exit 1; fi
PIP
  printf '#!/bin/bash\\necho "python ran: $*"\\n' > "$3/bin/python"
  chmod +x "$3/bin/pip" "$3/bin/python"
  exit 0
fi
echo "unexpected python3 call: $*" >&2
exit 99
"""


def _run_ci(tmp_path: Path, fail_on: str) -> subprocess.CompletedProcess:
    repo, shims = tmp_path / "repo", tmp_path / "bin"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(CI_RUN, repo / ".ci" / "run")
    shims.mkdir()
    (shims / "python3").write_text(_PYTHON3)
    (shims / "apt-get").write_text("#!/bin/bash\nexit 0\n")  # the Debian packages: nothing installed
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "FAIL_ON": fail_on}
    return subprocess.run(["bash", str(repo / ".ci" / "run")], cwd=repo, env=env, capture_output=True, text=True, timeout=60)


def test_ci_installs_then_tests_and_leaves_out_pips_location_warnings(tmp_path):
    res = _run_ci(tmp_path, "")
    assert res.returncode == 0, res.stderr
    assert "pip was asked: install --quiet -e .[dev]" in res.stdout and "python ran: -m pytest" in res.stdout
    assert "WARNING: Location" not in res.stdout + res.stderr


@pytest.mark.parametrize("fail_on, said", [("-e", "pip install -e .[dev] failed (exit 1)"),
                                           ("--upgrade", "pip install --upgrade pip failed (exit 1)")])
def test_a_failed_install_stops_ci_before_the_tests_and_says_so(tmp_path, fail_on, said):
    res = _run_ci(tmp_path, fail_on)
    assert res.returncode != 0
    assert said in res.stderr and "ERROR: no such package" in res.stdout
    assert "python ran" not in res.stdout


def test_scikit_videos_install_is_optional_and_says_when_it_fails(tmp_path):
    res = _run_ci(tmp_path, "scikit-video")
    assert res.returncode == 0, res.stderr
    assert "scikit-video did not install: the arrow-of-time test will skip" in res.stderr
    assert "python ran: -m pytest" in res.stdout
