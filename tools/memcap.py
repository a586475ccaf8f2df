"""Run a command under a cgroup v1 memory cap, for tests and demos.

The point of npyseq is that memory stays proportional to a batch, not to the
data. The honest test of that is to run the work in a process that *cannot*
hold the data, and to see it succeed (and a naive version of it get killed).
This module does that with the cgroup v1 memory controller:

>>> from tools.memcap import cgroup_available, run_capped, drop_page_cache
>>> ok, reason = cgroup_available()
>>> if not ok:
...     pytest.skip(reason)
>>> drop_page_cache("big.npy")          # so the capped run reads from disk
>>> r = run_capped([sys.executable, "-m", "npyseq", "convert", "big.npy", "-o", "out"],
...                limit_bytes=256 * 2**20, timeout=120)
>>> r.returncode, r.oom_killed, r.max_usage_bytes
(0, False, 201326592)
>>> r.check()                           # raises AssertionError with stderr otherwise

What it does, in order:

1. creates a fresh child group ``npyseq-test-<pid>-<random>`` under the memory
   cgroup this process is already in (not beside it: a group nested in ours
   can only tighten the limits this process runs under, never escape them);
2. writes ``memory.limit_in_bytes`` and, where the kernel has swap accounting,
   ``memory.memsw.limit_in_bytes`` to the same value, so swap cannot extend
   the cap;
3. starts the command through ``sh -c 'echo $$ > cgroup.procs && exec "$@"'``:
   the shell joins the group and then *becomes* the command (same pid), so
   the command is capped from its first allocation. (A ``preexec_fn`` would
   do the same but is unsafe when the parent has threads.) Every process it
   starts is in the group too;
4. waits, reads ``memory.max_usage_in_bytes``, ``memory.failcnt`` and the
   ``oom_kill`` count of ``memory.oom_control``;
5. kills (by pid) whatever the command left running in the group, moves any
   survivor back to our group, and removes the group.

What counts against a v1 cap: anonymous memory (the heap, numpy arrays) and
the page cache of files the group reads or writes first. Clean page cache is
reclaimed when the group nears its limit, so reading a memmapped file far
larger than the cap is fine; ``max_usage_bytes`` then sits near the limit
and ``failcnt`` grows, which is *not* an OOM. Dirty pages are different: they
must be written back before they can be reclaimed, and a v1 group that
dirties pages faster than writeback can be OOM-killed, which is why the
npyseq writer fsyncs each shard. Pages of a file already cached by another
group stay charged to that group: call :func:`drop_page_cache` on the inputs
first so the capped run pays for reading them.

Only root can create groups; :func:`cgroup_available` says whether this
machine allows it and, if not, why, so tests can skip with that reason.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
import signal
import subprocess
import time
from typing import Mapping, Sequence

__all__ = ["CappedRun", "cgroup_available", "drop_page_cache", "run_capped"]

_MOUNT = "/sys/fs/cgroup/memory"
_GROUP_PREFIX = "npyseq-test-"
# Joins the group named by $0, then replaces itself with the command ("$@").
_JOIN_AND_EXEC = 'echo $$ > "$0" && exec "$@"'


@dataclasses.dataclass(frozen=True)
class CappedRun:
    """What happened to a command run by :func:`run_capped`.

    Attributes:
        argv: the command.
        limit_bytes: the memory cap it ran under.
        returncode: its exit status; negative for a signal (``-9``: SIGKILL,
            which is what the OOM killer sends).
        oom_killed: the kernel's OOM killer killed a process of the group
            (``oom_kill`` of ``memory.oom_control``; where the kernel lacks
            that counter, ``returncode == -9``).
        max_usage_bytes: peak memory charged to the group (anonymous memory
            plus page cache), from ``memory.max_usage_in_bytes``.
        failcnt: times usage hit the limit (``memory.failcnt``). Non-zero is
            normal when page cache was reclaimed; it is not an OOM.
        seconds: wall time of the command.
        timed_out: the command ran past ``timeout`` and was killed.
        stdout, stderr: its output (``""`` when not captured).
    """

    argv: tuple[str, ...]
    limit_bytes: int
    returncode: int
    oom_killed: bool
    max_usage_bytes: int
    failcnt: int
    seconds: float
    timed_out: bool
    stdout: str
    stderr: str

    def check(self) -> "CappedRun":
        """Return self if the command exited 0 and was not OOM-killed; else raise AssertionError."""
        if self.returncode != 0 or self.oom_killed or self.timed_out:
            raise AssertionError(
                f"{' '.join(self.argv)} under a {self.limit_bytes / 2**20:.0f} MiB cap: "
                f"returncode {self.returncode}, oom_killed {self.oom_killed}, "
                f"timed_out {self.timed_out}, max usage {self.max_usage_bytes / 2**20:.0f} MiB\n"
                f"stderr:\n{self.stderr[-4000:]}"
            )
        return self


def _own_group() -> str:
    """Folder of the memory cgroup this process is in (the parent of our groups)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                folder = os.path.join(_MOUNT, path.lstrip("/"))
                # Under a cgroup namespace or a bind mount the path may not be
                # visible from here; the mount's root is then the best parent.
                return folder if os.path.isdir(folder) else _MOUNT
    return _MOUNT


def _is_v1_memory_mount() -> bool:
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and fields[1] == _MOUNT and fields[2] == "cgroup":
                return "memory" in fields[3].split(",")
    return False


@functools.lru_cache(maxsize=None)
def cgroup_available() -> tuple[bool, str]:
    """Whether :func:`run_capped` can work here, and if not, why (a skip reason).

    Checks: running as root; the cgroup v1 memory controller mounted at
    ``/sys/fs/cgroup/memory``; a child group can be created under this
    process's group and given a limit. The probe group is removed.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "creating a memory cgroup needs root"
    try:
        if not _is_v1_memory_mount():
            return False, f"no cgroup v1 memory controller mounted at {_MOUNT} (cgroup v2 only?)"
        parent = _own_group()
    except OSError as e:
        return False, f"cannot read the cgroup setup: {e}"
    try:
        group = _create_group(parent, 64 * 2**20)
    except OSError as e:
        return False, f"cannot create a memory cgroup under {parent}: {e}"
    try:
        if _read_int(group, "memory.limit_in_bytes") != 64 * 2**20:
            return False, f"{group}: memory.limit_in_bytes did not take the value written"
    finally:
        _remove_group(group, parent)
    return True, f"cgroup v1 memory controller usable under {parent}"


def _create_group(parent: str, limit_bytes: int) -> str:
    group = os.path.join(parent, f"{_GROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(group)
    try:
        # memory.limit first: memsw must never be below it.
        _write(group, "memory.limit_in_bytes", limit_bytes)
        if os.path.exists(os.path.join(group, "memory.memsw.limit_in_bytes")):
            _write(group, "memory.memsw.limit_in_bytes", limit_bytes)
    except BaseException:
        os.rmdir(group)
        raise
    return group


def _write(group: str, name: str, value: int) -> None:
    with open(os.path.join(group, name), "w") as f:
        f.write(str(value))


def _read_int(group: str, name: str) -> int:
    with open(os.path.join(group, name)) as f:
        return int(f.read().strip())


def _oom_kills(group: str) -> int | None:
    """The ``oom_kill`` count of ``memory.oom_control``, or None on kernels without it."""
    with open(os.path.join(group, "memory.oom_control")) as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return None


def _procs(group: str) -> list[int]:
    with open(os.path.join(group, "cgroup.procs")) as f:
        return [int(p) for p in f.read().split()]


def _remove_group(group: str, parent: str) -> None:
    """Kill what is left in the group (all started by us), move survivors out, rmdir."""
    for pid in _procs(group):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while True:
        left = _procs(group)
        if not left:
            break
        if time.monotonic() > deadline:
            for pid in left:  # e.g. stuck in uninterruptible I/O: leave the group anyway
                try:
                    _write(parent, "cgroup.procs", pid)
                except OSError:
                    pass
            break
        time.sleep(0.05)
    for _ in range(50):  # the kernel may take a moment to release the last task
        try:
            os.rmdir(group)
            return
        except OSError:
            time.sleep(0.1)
    os.rmdir(group)


def run_capped(
    argv: Sequence[str],
    limit_bytes: int,
    *,
    timeout: float | None = None,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
) -> CappedRun:
    """Run ``argv`` in a fresh memory cgroup capped at ``limit_bytes``; wait; report.

    Args:
        argv: the command, as for :func:`subprocess.run` (no shell).
        limit_bytes: the cap (RAM, and RAM plus swap where swap is accounted).
        timeout: seconds; past it the whole group is killed and
            ``timed_out`` is set.
        cwd, env: as for :func:`subprocess.run`.
        capture: collect stdout and stderr as text (else they go to ours).

    Returns:
        A :class:`CappedRun`. It never raises for the command's failure; call
        ``.check()`` for that.

    Raises:
        OSError: the group cannot be created (see :func:`cgroup_available`).
    """
    argv = tuple(os.fspath(a) for a in argv)
    if not argv:
        raise ValueError("argv must name a command, got an empty sequence")
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes <= 0:
        raise ValueError(f"limit_bytes must be a positive int, got {limit_bytes!r}")
    parent = _own_group()
    group = _create_group(parent, limit_bytes)
    try:
        pipe = subprocess.PIPE if capture else None
        start = time.monotonic()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", _JOIN_AND_EXEC, os.path.join(group, "cgroup.procs"), *argv],
            stdout=pipe, stderr=pipe, text=True, cwd=cwd,
            env=None if env is None else dict(env),
        )
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for pid in _procs(group):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            out, err = proc.communicate()
        seconds = time.monotonic() - start
        kills = _oom_kills(group)
        if kills is not None:
            oom_killed = kills > 0
        else:  # a SIGKILL we did not send (timeout) is the OOM killer's
            oom_killed = proc.returncode == -signal.SIGKILL and not timed_out
        return CappedRun(
            argv=argv, limit_bytes=limit_bytes, returncode=proc.returncode,
            oom_killed=oom_killed,
            max_usage_bytes=_read_int(group, "memory.max_usage_in_bytes"),
            failcnt=_read_int(group, "memory.failcnt"), seconds=seconds,
            timed_out=timed_out, stdout=out or "", stderr=err or "",
        )
    finally:
        _remove_group(group, parent)


def drop_page_cache(path: str | os.PathLike) -> None:
    """Write back and drop a file's pages from the page cache (best effort).

    Afterwards the next reader pays for reading the file from disk, and its
    pages are charged to the reader's cgroup rather than to whichever process
    cached them first.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fdatasync(fd)  # dirty pages cannot be dropped; make them clean first
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
