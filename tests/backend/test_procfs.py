"""Process facts from ``/proc``: captured text, a tree built from it, and the real thing."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from backend import procfs
from backend.procfs import Stat

STAT = (
    "16694 (python3) R 16692 16690 4331 0 -1 4194304 3024 6565 1 0 4 1 3 2 20 0 1 0 68402 "
    "18649088 3575 18446744073709551615 94697485795328 94697485795669 140730032550112 0 0 0 0 "
    "16781312 2 0 0 0 17 0 0 0 0 0 0 94697485807024 94697485807640 94697940713472 "
    "140730032556288 140730032556331 140730032556331 140730032558031 0\n"
)
LIMITS = """\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max processes             96364                96364                processes 
Max open files            20000                524288               files     
Max locked memory         8388608              8388608              bytes     
"""  # noqa: W291 (the kernel pads its columns)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (STAT, Stat(pid=16694, state="R", ppid=16692, pgid=16690)),
        ("7 (gvirtus backend) S 1 7 7 0", Stat(pid=7, state="S", ppid=1, pgid=7)),
        ("8 (a) b (c)) Z 7 7 7 0", Stat(pid=8, state="Z", ppid=7, pgid=7)),
    ],
    ids=["captured", "space-in-name", "parenthesis-in-name"],
)
def test_stat_lines(text: str, expected: Stat) -> None:
    assert procfs.parse_stat(text) == expected


@pytest.mark.parametrize("text", ["", "12 python S", "garbage)"], ids=["empty", "no-name", "short"])
def test_broken_stat_lines_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="stat"):
        procfs.parse_stat(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LIMITS, 20000),
        (LIMITS.replace("20000     ", "unlimited "), None),
        ("Limit Soft Limit Hard Limit Units\n", None),
    ],
    ids=["captured", "unlimited", "absent"],
)
def test_open_files_limit_is_the_soft_one(text: str, expected: int | None) -> None:
    assert procfs.parse_open_files_limit(text) == expected


@pytest.mark.parametrize(
    ("link", "expected"),
    [("socket:[30480]", 30480), ("pipe:[30302]", None), ("/dev/null", None), ("socket:[", None)],
    ids=["socket", "pipe", "file", "torn"],
)
def test_socket_inodes_from_descriptor_links(link: str, expected: int | None) -> None:
    assert procfs.socket_inode(link) == expected


def add_process(
    root: pathlib.Path, pid: int, *, pgid: int, state: str = "S", fds: dict[str, str]
) -> None:
    """A process in a captured /proc tree: its stat, limits, and fd links."""
    folder = root / str(pid)
    (folder / "fd").mkdir(parents=True)
    (folder / "stat").write_text(f"{pid} (gvirtus-backend) {state} 1 {pgid} {pgid} 0 -1\n")
    (folder / "limits").write_text(LIMITS)
    for fd, target in fds.items():
        (folder / "fd" / fd).symlink_to(target)


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    add_process(tmp_path, 100, pgid=100, fds={"0": "/dev/null", "1": "pipe:[5]"})
    add_process(
        tmp_path, 101, pgid=100, fds={"0": "/dev/null", "3": "socket:[7]", "4": "socket:[8]"}
    )
    add_process(tmp_path, 102, pgid=100, state="Z", fds={})
    add_process(tmp_path, 200, pgid=200, fds={})
    (tmp_path / "self").mkdir()
    (tmp_path / "sys").mkdir()
    return tmp_path


def test_groups_hold_their_live_members(tree: pathlib.Path) -> None:
    groups = procfs.process_groups(root=tree)
    assert {pgid: sorted(s.pid for s in members) for pgid, members in groups.items()} == {
        100: [100, 101],
        200: [200],
    }


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        (101, procfs.Descriptors(count=3, socket_inodes=frozenset({7, 8}))),
        (100, procfs.Descriptors(count=2, socket_inodes=frozenset())),
        (999, None),
    ],
    ids=["serving-child", "parent", "gone"],
)
def test_descriptors_of_a_process(
    tree: pathlib.Path, pid: int, expected: procfs.Descriptors | None
) -> None:
    assert procfs.descriptors(pid, root=tree) == expected


def test_limit_and_namespace_of_a_captured_process(tree: pathlib.Path) -> None:
    assert procfs.open_files_limit(101, root=tree) == 20000
    assert procfs.open_files_limit(999, root=tree) is None
    assert procfs.network_namespace(101, root=tree) == "pid:101"


def test_a_real_child_process() -> None:
    """The readers agree with what a real process did to itself and counted itself."""
    code = (
        "import os, resource, socket, sys\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))\n"
        "s = socket.create_server(('127.0.0.1', 0))\n"
        "print(len(os.listdir('/proc/self/fd')) - 1, flush=True)  # less the listing's own\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-I", "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as child:
        assert child.stdout is not None
        counted = int(child.stdout.readline())
        seen = procfs.descriptors(child.pid)
        limit = procfs.open_files_limit(child.pid)
        members = procfs.process_groups().get(child.pid, [])
        namespace = procfs.network_namespace(child.pid)
        child.kill()
    assert seen is not None
    assert (seen.count, len(seen.socket_inodes), limit) == (counted, 1, 40)
    assert [m.pid for m in members] == [child.pid]
    assert namespace == os.readlink("/proc/self/ns/net")
