"""`--workers auto` honours CPU limits: the CFS quota reader against fake cgroup trees, the real cgroup
of the test process, and (as root on a cgroup v1 host) a real child cgroup with a 1-CPU quota."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from clusterd.ops import cgroup
from clusterd.ops.cgroup import Mount, cpu_budget, parse_mountinfo, parse_proc_cgroup, read_quota

ROOT = Path(__file__).resolve().parent.parent
AFFINITY = cgroup.affinity_cpus()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake /sys/fs/cgroup (tmp/fs) and /proc/self/cgroup (tmp/self_cgroup), wired by env."""
    fs = tmp_path / "fs"
    fs.mkdir()
    proc = tmp_path / "self_cgroup"
    monkeypatch.setenv("CLUSTERD_CGROUP_ROOT", str(fs))
    monkeypatch.setenv("CLUSTERD_PROC_SELF_CGROUP", str(proc))
    return fs, proc


def v2_tree(fs: Path, proc: Path, levels: dict[str, str], leaf: str) -> None:
    """A cgroup v2 tree: `levels` maps a cgroup path to its cpu.max ("" = no cpu.max file)."""
    write(fs / "cgroup.controllers", "cpu memory pids\n")
    for path, cpu_max in levels.items():
        directory = fs / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        if cpu_max:
            write(directory / "cpu.max", cpu_max)
    write(proc, f"0::{leaf}\n")


def v1_tree(fs: Path, proc: Path, levels: dict[str, tuple[str, str]], leaf: str,
            controllers: str = "cpu,cpuacct") -> None:
    """A cgroup v1 tree: `levels` maps a cgroup path to (cfs_quota_us, cfs_period_us)."""
    for path, (quota, period) in levels.items():
        directory = fs / controllers / path.lstrip("/")
        write(directory / "cpu.cfs_quota_us", quota)
        write(directory / "cpu.cfs_period_us", period)
    write(proc, f"12:pids:/x\n4:{controllers}:{leaf}\n3:cpuset:/\n1:name=systemd:{leaf}\n")


def expected(quota_cpus: int) -> int:
    return min(AFFINITY, quota_cpus)


# ---------------------------------------------------------------------------- cgroup v2
def test_v2_quota_rounds_up(fake):
    fs, proc = fake
    v2_tree(fs, proc, {"/": "", "/pod": "max 100000", "/pod/app": "150000 100000"}, "/pod/app")
    quota = read_quota()
    assert (quota.quota_us, quota.period_us, quota.whole_cpus) == (150000, 100000, 2)
    budget = cpu_budget()
    assert budget.cpus == expected(2) and budget.quota == quota
    if AFFINITY > 2:
        assert budget.source == "cgroup v2 cpu.max 150000/100000"


def test_v2_no_limit_falls_back_to_affinity(fake):
    fs, proc = fake
    v2_tree(fs, proc, {"/": "", "/app": "max 100000"}, "/app")
    assert read_quota() is None
    budget = cpu_budget()
    assert budget.cpus == AFFINITY and budget.source.startswith(f"affinity {AFFINITY} CPU")


def test_v2_stricter_parent_wins(fake):
    fs, proc = fake
    v2_tree(fs, proc, {"/kubepods": "50000 100000", "/kubepods/pod1": "max 100000",
                       "/kubepods/pod1/ctr": "400000 100000"}, "/kubepods/pod1/ctr")
    quota = read_quota()
    assert quota.cpus == 0.5 and quota.whole_cpus == 1
    assert cpu_budget().cpus == 1


def test_v2_periods_are_compared_as_cpus(fake):
    fs, proc = fake
    # The leaf's 300000/200000 is 1.5 CPUs, the parent's 100000/50000 is 2: the leaf binds, though
    # its raw quota is the larger number.
    v2_tree(fs, proc, {"/a": "100000 50000", "/a/b": "300000 200000"}, "/a/b")
    assert read_quota().source == "cgroup v2 cpu.max 300000/200000"


@pytest.mark.parametrize("content", ["", "garbage", "150000", "max", "-5 100000", "100000 0",
                                     "abc 100000", "150000 100000 7", "\x00\xff"])
def test_v2_malformed_cpu_max_is_no_limit(fake, content):
    fs, proc = fake
    v2_tree(fs, proc, {"/app": content}, "/app")
    assert read_quota() is None
    assert cpu_budget().cpus == AFFINITY


def test_v2_malformed_level_does_not_hide_a_good_parent(fake):
    fs, proc = fake
    v2_tree(fs, proc, {"/p": "100000 100000", "/p/c": "nonsense"}, "/p/c")
    assert read_quota().whole_cpus == 1


def test_v2_hybrid_layout_unified_subdir(fake):
    fs, proc = fake
    write(fs / "unified" / "cgroup.controllers", "cpu\n")
    write(fs / "unified" / "svc" / "cpu.max", "100000 100000\n")
    write(proc, "0::/svc\n")
    assert read_quota().whole_cpus == 1


# ---------------------------------------------------------------------------- cgroup v1
def test_v1_quota(fake):
    fs, proc = fake
    v1_tree(fs, proc, {"/": ("-1", "100000"), "/docker/abc": ("250000", "100000")}, "/docker/abc")
    quota = read_quota()
    assert quota.whole_cpus == 3 and quota.source.startswith("cgroup v1")
    assert cpu_budget().cpus == expected(3)


def test_v1_minus_one_is_no_limit(fake):
    fs, proc = fake
    v1_tree(fs, proc, {"/": ("-1", "100000"), "/app": ("-1", "100000")}, "/app")
    assert read_quota() is None and cpu_budget().cpus == AFFINITY


def test_v1_stricter_parent_wins(fake):
    fs, proc = fake
    v1_tree(fs, proc, {"/slice": ("100000", "100000"), "/slice/app": ("-1", "100000")}, "/slice/app",
            controllers="cpu")
    assert read_quota().whole_cpus == 1 and cpu_budget().cpus == 1


@pytest.mark.parametrize("quota,period", [("", "100000"), ("lots", "100000"), ("100000", "0"),
                                          ("100000", ""), ("100000", "-100000"), ("0", "100000")])
def test_v1_malformed_files_are_no_limit(fake, quota, period):
    fs, proc = fake
    v1_tree(fs, proc, {"/app": (quota, period)}, "/app")
    assert read_quota() is None and cpu_budget().cpus == AFFINITY


def test_v1_missing_files_are_no_limit(fake):
    fs, proc = fake
    (fs / "cpu,cpuacct" / "app").mkdir(parents=True)
    write(proc, "4:cpu,cpuacct:/app\n")
    assert read_quota() is None


def test_cpuset_and_cpuacct_lines_are_not_the_cpu_controller():
    v2, v1 = parse_proc_cgroup("5:cpuset:/a\n3:cpuacct:/b\n0::/c\n")
    assert (v2, v1) == ("/c", None)
    assert parse_proc_cgroup("4:cpuacct,cpu:/d\n") == (None, "/d")


@pytest.mark.parametrize("text", ["", "\n\n", "nonsense", "::::", "0::relative", "\x00"])
def test_malformed_proc_self_cgroup_is_no_limit(fake, text):
    fs, proc = fake
    write(fs / "cgroup.controllers", "cpu\n")
    write(fs / "cpu.max", "100000 100000\n")
    write(proc, text)
    assert read_quota() is None and cpu_budget().cpus == AFFINITY


def test_missing_proc_self_cgroup_is_no_limit(fake):
    assert read_quota() is None and cpu_budget().cpus == AFFINITY


def test_both_hierarchies_the_tighter_binds(fake):
    fs, proc = fake
    write(fs / "unified" / "cgroup.controllers", "\n")
    write(fs / "unified" / "app" / "cpu.max", "300000 100000\n")
    write(fs / "cpu" / "app" / "cpu.cfs_quota_us", "100000\n")
    write(fs / "cpu" / "app" / "cpu.cfs_period_us", "100000\n")
    write(proc, "0::/app\n2:cpu:/app\n")
    assert read_quota().source.startswith("cgroup v1")


# ---------------------------------------------------------------------------- mountinfo
MOUNTINFO = r"""22 27 0:21 / /proc rw,nosuid - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,relatime master:5 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
41 31 0:38 / /sys/fs/cgroup/unified\040dir rw,relatime - cgroup2 cgroup2 rw
broken line
"""


def test_parse_mountinfo_finds_both_hierarchies():
    v2, v1 = parse_mountinfo(MOUNTINFO)
    assert v2 == Mount(2, "/", "/sys/fs/cgroup/unified dir")
    assert v1 == Mount(1, "/docker/abc", "/sys/fs/cgroup/cpu,cpuacct")
    assert parse_mountinfo("") == (None, None)


def test_container_without_cgroup_namespace_strips_the_mount_root(tmp_path):
    """Docker with cgroupns=host: /proc/self/cgroup says /docker/abc, and that cgroup is the mount."""
    point = tmp_path / "cpu"
    write(point / "cpu.cfs_quota_us", "200000")
    write(point / "cpu.cfs_period_us", "100000")
    mount = Mount(1, "/docker/abc", str(point))
    assert cgroup.v1_quota(mount, "/docker/abc").whole_cpus == 2
    # A path outside the mount's root cannot be walked: the mount point is read, nothing above it.
    assert cgroup.v1_quota(mount, "/elsewhere").whole_cpus == 2


def test_walk_stops_at_the_mount_point(tmp_path):
    write(tmp_path / "cpu.max", "100000 100000")             # above the mount: must not be read
    point = tmp_path / "mnt"
    write(point / "a" / "cpu.max", "max 100000")
    assert cgroup.v2_quota(Mount(2, "/", str(point)), "/a") is None


# ---------------------------------------------------------------------------- the real machine
def test_real_cgroup_of_this_process(monkeypatch):
    monkeypatch.delenv("CLUSTERD_CGROUP_ROOT", raising=False)
    monkeypatch.delenv("CLUSTERD_PROC_SELF_CGROUP", raising=False)
    budget = cpu_budget()
    assert 1 <= budget.cpus <= AFFINITY
    assert budget.source.startswith(("cgroup v1", "cgroup v2", "affinity"))
    doc = budget.document()
    assert doc["cpus"] == budget.cpus and doc["affinity_cpus"] == AFFINITY


def resolve_auto_in_subprocess(env_extra: dict[str, str], preamble: str = "") -> int:
    """`--workers auto` resolved by the code the CLI uses, in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERD_")}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    code = preamble + "from clusterd.config import parse_workers; print(parse_workers('auto'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_workers_auto_uses_the_quota(tmp_path):
    fs, proc = tmp_path / "fs", tmp_path / "self_cgroup"
    v2_tree(fs, proc, {"/app": "100000 100000"}, "/app")
    assert resolve_auto_in_subprocess({"CLUSTERD_CGROUP_ROOT": str(fs),
                                       "CLUSTERD_PROC_SELF_CGROUP": str(proc)}) == 1


def _v1_cpu_mount() -> str | None:
    try:
        _, v1 = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return None
    return v1.point if v1 and v1.root == "/" else None


@pytest.mark.parametrize("layout", ["quota on the cgroup", "quota on its parent"])
def test_real_v1_child_cgroup_with_one_cpu(layout):
    mount = _v1_cpu_mount()
    if os.geteuid() != 0:
        pytest.skip("needs root to create a cgroup")
    if mount is None or not os.access(mount, os.W_OK):
        pytest.skip("no writable cgroup v1 cpu controller mounted here")
    if AFFINITY < 2:
        pytest.skip("with one CPU of affinity a 1-CPU quota changes nothing to observe")
    parent = Path(mount) / f"clusterd-test-{uuid.uuid4().hex[:8]}"
    child = parent / "app"
    try:
        child.mkdir(parents=True)
        limited = child if layout == "quota on the cgroup" else parent
        (limited / "cpu.cfs_period_us").write_text("100000")
        (limited / "cpu.cfs_quota_us").write_text("100000")
        join = f"open({str(child / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid()))\n"
        assert resolve_auto_in_subprocess({}, preamble=join) == 1
        assert resolve_auto_in_subprocess({}) == cpu_budget().cpus   # outside it, as before
    finally:
        for directory in (child, parent):
            try:
                directory.rmdir()
            except OSError:
                pass


def test_status_says_where_workers_auto_came_from(fake, cluster):
    fs, proc = fake
    v2_tree(fs, proc, {"/pod": "100000 100000"}, "/pod")   # a 1-CPU limit
    budget = cpu_budget().document()                      # what the master must find, read here
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "auto",
                   env={"CLUSTERD_CGROUP_ROOT": str(fs), "CLUSTERD_PROC_SELF_CGROUP": str(proc)})
    config = inst.status()["config"]
    assert config["workers"] == budget["cpus"] == 1
    assert config["workers_auto"] == budget
    table = inst.cli("status", "--name", inst.name)
    assert table.returncode == 0, table.stderr
    assert f"ready (auto: {budget['source']})" in table.stdout   # in the head, beside the worker count


def test_status_has_no_auto_origin_for_a_given_number(cluster):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1")
    assert inst.status()["config"]["workers_auto"] is None
    assert "auto:" not in inst.cli("status", "--name", inst.name).stdout
