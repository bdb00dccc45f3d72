"""The memory a run may use on the CPU: the machine's available RAM, or less where a container's cgroup
(v2 or v1) limits the process, read from fake /proc and /sys/fs/cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqvision.runtime import available_memory

CPU = torch.device("cpu")
GiB, MiB = 1 << 30, 1 << 20


def _tree(tmp_path: Path, self_cgroup: str, files: dict[str, str], host: int = 64 * GiB) -> dict:
    """A fake ``/proc`` (``meminfo`` saying ``host`` bytes available, ``self/cgroup``) and cgroup mount."""
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal:       {2 * host // 1024} kB\nMemAvailable:   {host // 1024} kB\n")
    (proc / "self" / "cgroup").write_text(self_cgroup)
    cgroup.mkdir()
    for name, text in files.items():
        (cgroup / name).parent.mkdir(parents=True, exist_ok=True)
        (cgroup / name).write_text(text)
    return {"proc": proc, "cgroup_root": cgroup}


def test_a_cgroup_v2_limit_bounds_the_memory_less_its_usage_and_not_its_reclaimable_cache(tmp_path):
    paths = _tree(tmp_path, "0::/kubepods/pod1\n", {
        "kubepods/memory.max": "max\n",  # no limit above the pod
        "kubepods/pod1/memory.max": f"{2 * GiB}\n",
        "kubepods/pod1/memory.current": f"{512 * MiB}\n",
        "kubepods/pod1/memory.stat": f"anon {300 * MiB}\nfile {200 * MiB}\ninactive_file {128 * MiB}\n",
    })
    assert available_memory(CPU, **paths) == 2 * GiB - (512 - 128) * MiB


def test_a_tighter_limit_on_a_parent_cgroup_wins(tmp_path):
    paths = _tree(tmp_path, "0::/pod/container\n", {
        "pod/memory.max": f"{1 * GiB}\n",
        "pod/memory.current": f"{900 * MiB}\n",
        "pod/container/memory.max": "max\n",
        "pod/container/memory.current": f"{100 * MiB}\n",
    })
    assert available_memory(CPU, **paths) == 124 * MiB


def test_a_cgroup_v1_limit_in_a_container_whose_own_cgroup_is_the_mount(tmp_path):
    # Docker on v1: /proc/self/cgroup names the host's path, but the container sees its cgroup at the mount
    paths = _tree(tmp_path, "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n", {
        "memory/memory.limit_in_bytes": f"{1 * GiB}\n",
        "memory/memory.usage_in_bytes": f"{256 * MiB}\n",
        "memory/memory.stat": f"inactive_file {10 * MiB}\ntotal_inactive_file {64 * MiB}\n",
    })
    assert available_memory(CPU, **paths) == 1 * GiB - (256 - 64) * MiB


def test_a_cgroup_v1_limit_at_the_process_own_path(tmp_path):
    paths = _tree(tmp_path, "4:memory:/jobs/7\n", {
        "memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        "memory/jobs/7/memory.limit_in_bytes": f"{3 * GiB}\n",
        "memory/jobs/7/memory.usage_in_bytes": f"{1 * GiB}\n",
    })
    assert available_memory(CPU, **paths) == 2 * GiB


@pytest.mark.parametrize("self_cgroup, files", [
    ("0::/\n", {"memory.max": "max\n", "memory.current": f"{5 * GiB}\n"}),  # v2, no limit
    ("4:memory:/\n", {"memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "1\n"}),
    ("0::/\n", {}),  # no memory controller here (a hybrid machine's v2 tree, or no cgroup files at all)
    ("", {}),
])
def test_without_a_limit_the_machine_available_memory_is_the_budget(tmp_path, self_cgroup, files):
    assert available_memory(CPU, **_tree(tmp_path, self_cgroup, files, host=6 * GiB)) == 6 * GiB


def test_the_machine_available_memory_wins_when_it_is_the_smaller(tmp_path):
    paths = _tree(tmp_path, "0::/c\n", {"c/memory.max": f"{8 * GiB}\n", "c/memory.current": "0\n"}, host=3 * GiB)
    assert available_memory(CPU, **paths) == 3 * GiB


def test_a_cgroup_over_its_limit_leaves_nothing(tmp_path):
    paths = _tree(tmp_path, "0::/c\n", {"c/memory.max": f"{1 * GiB}\n", "c/memory.current": f"{2 * GiB}\n"})
    assert available_memory(CPU, **paths) == 0


def test_this_machine_gives_a_positive_budget_within_its_ram():
    import os

    assert 0 < available_memory(CPU) <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
