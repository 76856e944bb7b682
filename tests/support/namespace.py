"""A private copy of the machine's accounts for tests that run the real account tools.

`private_system()` starts private mount and PID namespaces (as root) whose /etc is a
tmpfs copy of the machine's, with empty tmpfs /home, /var/log and /var/mail (and /run,
on request); commands run in there with `PrivateSystem.run()`, daemons with
`PrivateSystem.start()`. useradd, usermod, chpasswd and visudo then change only the
copy, and it all vanishes when the namespace's last process exits.

A whole-directory copy of /etc, not single files: useradd replaces /etc/passwd by
rename, which a bind-mounted file refuses. The copy lives on a tmpfs so no copy of
/etc/shadow is ever left on disk. (tests/support/sshd.py does the same for sshd.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.real_software import require

__all__ = ["PrivateSystem", "private_system", "require_root"]

_START_TIMEOUT_SECONDS = 10.0
_STOP_TIMEOUT_SECONDS = 5.0
_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

# Runs as init of the new namespaces. `ready` tells the parent the mounts are done;
# then init just waits (it is killed by pid from outside, which ends the namespace).
# With "private-run", /run is a tmpfs too, holding sshd's privilege separation
# directory: sshd can run in there, and nothing in there sees the machine's systemd.
# With a hidden/keep pair, `hidden` (e.g. /root, 0700) becomes an empty 0755 tmpfs
# holding only `keep` (the Python install under it), so other users can run Python.
_LAUNCHER = r"""
set -eu
scratch=$1 run=${2:-} hidden=${3:-} keep=${4:-}
mount -t tmpfs -o mode=0755 sft-accounts "$scratch"
cp -a /etc "$scratch/etc"
mkdir -m 0755 "$scratch/home"
mount --bind "$scratch/etc" /etc
mount --bind "$scratch/home" /home
mount -t tmpfs -o mode=0755 sft-accounts-log /var/log
if [ -d /var/mail ]; then mount -t tmpfs -o mode=2775 sft-accounts-mail /var/mail; fi
if [ "$run" = private-run ]; then
  mount -t tmpfs -o mode=0755 sft-accounts-run /run
  mkdir -m 0755 /run/sshd
fi
if [ -n "$hidden" ]; then
  mkdir "$scratch/keep"
  mount --bind "$keep" "$scratch/keep"
  mount -t tmpfs -o mode=0755 sft-open "$hidden"
  mkdir "$keep"
  mount --bind "$scratch/keep" "$keep"
fi
echo ready
exec sleep infinity
"""


@dataclass(frozen=True)
class PrivateSystem:
    """A running private namespace: run commands that see its own /etc and /home."""

    #: The namespace's init, as this process sees it.
    pid: int
    #: Where commands start (the repository root, so `python -m tests…` works).
    cwd: Path

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout_seconds: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the namespace; if `check`, fail the test with its output when it fails."""
        nsenter = shutil.which("nsenter") or "nsenter"
        result = subprocess.run(
            [nsenter, f"--target={self.pid}", "--mount", "--pid", f"--wd={self.cwd}", "--", *argv],
            input=input,
            capture_output=True,
            text=True,
            env={**_ENVIRONMENT, **(env or {})},
            timeout=timeout_seconds,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(argv)} exited with {result.returncode} in the private namespace:\n"
                f"{result.stdout}{result.stderr}",
                pytrace=False,
            )
        return result

    def read(self, path: str) -> str:
        """Return the text of `path` as the namespace sees it."""
        return self.run(["cat", path]).stdout

    def start(
        self, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in the namespace in the background, its output appended to `log`.

        Returns nsenter's process; `argv` runs as its only child. Stop it with `stop`
        (or leave it: it ends with the namespace).
        """
        nsenter = shutil.which("nsenter") or "nsenter"
        with log.open("ab") as output:
            return subprocess.Popen(
                [
                    nsenter,
                    f"--target={self.pid}",
                    "--mount",
                    "--pid",
                    f"--wd={self.cwd}",
                    "--",
                    *argv,
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**_ENVIRONMENT, **(env or {})},
                start_new_session=True,
            )

    def stop(
        self,
        process: subprocess.Popen[bytes],
        *,
        signum: signal.Signals = signal.SIGTERM,
        timeout_seconds: float = _STOP_TIMEOUT_SECONDS,
    ) -> int:
        """Send `signum` to what `start` runs (by pid), wait; SIGKILL it on timeout.

        Returns its exit status as nsenter passes it on (negative: killed by that signal).
        """
        # nsenter forwards no signal, so its child gets it; only while nsenter lives
        # (and has not reaped it) is the child's pid certain to be that process.
        if process.poll() is None:
            for child in _children(process.pid):
                _kill(child, signum)
            try:
                return process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                for child in _children(process.pid):
                    _kill(child, signal.SIGKILL)
                process.kill()
        return process.wait()


def require_root(what: str) -> None:
    """Skip (fail when CI=true) unless root: private mount namespaces need it."""
    if os.geteuid() == 0:
        return
    message = f"{what} need root (a private mount namespace)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs {message}", pytrace=False)
    pytest.skip(message)


def _interpreter_mounts() -> tuple[str, str]:
    """Return (a directory others cannot enter, its child holding this Python), or ("", "")."""
    real = Path(sys.executable).resolve()
    for directory in reversed(real.parents):
        if directory != real.parents[0] and not directory.stat().st_mode & 0o001:
            return str(directory), str(directory / real.relative_to(directory).parts[0])
    return "", ""


@contextmanager
def private_system(
    tmp_path: Path,
    *,
    cwd: Path | None = None,
    private_run: bool = False,
    share_python: bool = False,
) -> Iterator[PrivateSystem]:
    """Start a private namespace with copies of /etc and an empty /home; always stop it.

    `private_run`: an empty /run too, with sshd's /run/sshd (for running sshd in there).
    `share_python`: let unprivileged users run this Python (and so the venv's programs)
    when it is installed under a directory only root can enter, such as /root.
    """
    hidden, keep = _interpreter_mounts() if share_python else ("", "")
    require_root("account tests")
    unshare = require("unshare", shutil.which("unshare"), "run `make deps` (apt util-linux)")
    require("nsenter", shutil.which("nsenter"), "run `make deps` (apt util-linux)")
    scratch = Path(tempfile.mkdtemp(prefix="namespace-", dir=tmp_path))
    launcher = subprocess.Popen(
        [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--mount-proc",
            "--fork",
            "--kill-child=SIGKILL",
            "--",
            "/bin/sh",
            "-c",
            _LAUNCHER,
            "sft-accounts-namespace",
            str(scratch),
            "private-run" if private_run else "",
            hidden,
            keep,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENVIRONMENT,
        start_new_session=True,
    )
    init_pid = 0
    try:
        assert launcher.stdout is not None
        line = launcher.stdout.readline()  # "ready", or "" if the launcher died
        if line.strip() != "ready":
            launcher.wait(timeout=_START_TIMEOUT_SECONDS)
            assert launcher.stderr is not None
            pytest.fail(
                f"the private namespace did not start: {launcher.stderr.read()}", pytrace=False
            )
        init_pid = _only_child(launcher.pid)
        if os.readlink(f"/proc/{init_pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            pytest.fail("the namespace's init is not in a private mount namespace", pytrace=False)
        yield PrivateSystem(pid=init_pid, cwd=cwd or Path.cwd())
    finally:
        _stop(launcher, init_pid)


def _children(pid: int) -> list[int]:
    """Return the children of `pid` (none when it is gone)."""
    try:
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    except OSError:
        return []


def _kill(pid: int, signum: signal.Signals) -> None:
    """Send `signum` to `pid` unless it is gone already."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _only_child(pid: int) -> int:
    """Return the one child of `pid` (unshare --fork's child: the namespace's init)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        pytest.fail(f"unshare (pid {pid}) has children {children}, expected one", pytrace=False)
    return int(children[0])


def _stop(launcher: subprocess.Popen[str], init_pid: int) -> None:
    """Kill the namespace's init by pid (the kernel then ends the namespace); reap unshare."""
    # Only while unshare, its parent, lives: until then the pid cannot be reused.
    if launcher.poll() is None:
        if init_pid:
            try:
                os.kill(init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            launcher.terminate()
    try:
        launcher.wait(timeout=_STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()
    for stream in (launcher.stdout, launcher.stderr):
        if stream is not None:
            stream.close()
