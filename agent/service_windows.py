"""Windows: register sftd with the Service Control Manager through `sc.exe`.

UNTESTED on Windows: the tests run on Linux and check the sc.exe argv through an
injected runner. Known gap: sftd does not yet answer the Service Control Manager
itself (pywin32's servicemanager), so a service registered this way is stopped by
Windows after its start timeout; it needs that handshake before it is usable.
The service runs as LocalSystem, starts at boot, and is restarted on failure (5 s,
5 s, then 60 s; the count resets after a day). Its description carries the marker
that lets `uninstall` tell sftd's service from another one named sftd.
"""

from __future__ import annotations

import subprocess

from agent.service import (
    SERVICE_NAME,
    CommandResult,
    Runner,
    ServiceError,
    ServiceSpec,
    run_command,
)

__all__ = ["DESCRIPTION", "WindowsService"]

#: The service's description; its first words mark a service sftd registered.
DESCRIPTION = "sft server agent (registered by `sftd service install`)"
_MARKER = "registered by `sftd service install`"
# Win32 error codes sc.exe exits with.
_SERVICE_DOES_NOT_EXIST = 1060
_SERVICE_ALREADY_RUNNING = 1056
_SERVICE_NOT_ACTIVE = 1062
_RESTART_ACTIONS = "restart/5000/restart/5000/restart/60000"
_RESET_SECONDS = "86400"


class WindowsService:
    """sftd as a Windows service (a ServiceManager)."""

    def __init__(self, *, runner: Runner = run_command, sc: str = "sc.exe") -> None:
        self._runner = runner
        self._sc = sc

    def install(self, spec: ServiceSpec) -> str:
        """Create (or reconfigure) the service, set its restart actions, and start it."""
        # sc.exe takes `name= value` as two arguments, the space after `=` included.
        bin_path = subprocess.list2cmdline(spec.argv())
        if self._registered():
            self._call("config", SERVICE_NAME, "binPath=", bin_path, "start=", "auto")
            verb = "updated"
        else:
            self._call(
                "create",
                SERVICE_NAME,
                "binPath=",
                bin_path,
                "start=",
                "auto",
                "DisplayName=",
                "sft server agent (sftd)",
            )
            verb = "registered"
        self._call("description", SERVICE_NAME, DESCRIPTION)
        self._call("failure", SERVICE_NAME, "reset=", _RESET_SECONDS, "actions=", _RESTART_ACTIONS)
        self._call("start", SERVICE_NAME, allowed=(_SERVICE_ALREADY_RUNNING,))
        return f"{verb} the Windows service {SERVICE_NAME} and started it"

    def uninstall(self) -> str:
        """Stop and delete the service; nothing to do when it is not registered."""
        if not self._registered():
            return f"the Windows service {SERVICE_NAME} is not registered; nothing to uninstall"
        self._call("stop", SERVICE_NAME, allowed=(_SERVICE_NOT_ACTIVE,))
        self._call("delete", SERVICE_NAME)
        return f"stopped and deleted the Windows service {SERVICE_NAME}"

    def _registered(self) -> bool:
        """Return whether sftd's service exists; refuse one sftd did not register."""
        result = self._call("qdescription", SERVICE_NAME, allowed=(_SERVICE_DOES_NOT_EXIST,))
        if result.returncode == _SERVICE_DOES_NOT_EXIST:
            return False
        if _MARKER not in result.output:
            raise ServiceError(
                f"a Windows service named {SERVICE_NAME} exists that sftd did not register; "
                "leaving it alone"
            )
        return True

    def _call(self, *args: str, allowed: tuple[int, ...] = ()) -> CommandResult:
        result = self._runner([self._sc, *args])
        if result.returncode != 0 and result.returncode not in allowed:
            raise ServiceError(f"`sc.exe {args[0]} {SERVICE_NAME}` failed: {result.first_line()}")
        return result
