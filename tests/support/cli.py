"""Run the real `sft` console script as a person at their own machine (their SFT_HOME)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SFT_BIN", "Person", "Ran", "clean_environment"]

SFT_BIN = str(Path(sys.executable).parent / "sft")


def clean_environment(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment without SFT_* settings, with SFT_HOME=`home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFT_")}
    return {**env, "SFT_HOME": str(home), **(extra or {})}


@dataclass(frozen=True)
class Ran:
    """What one `sft` run did."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """Return stdout as JSON, after checking the run succeeded."""
        assert self.returncode == 0, (self.stdout, self.stderr)
        return json.loads(self.stdout)

    def one_error_line(self) -> str:
        """Assert a failure printed one `sft: error:` line and nothing else; return its text."""
        assert self.returncode == 1, (self.stdout, self.stderr)
        assert self.stdout == "" and "Traceback" not in self.stderr
        (line,) = self.stderr.splitlines()
        assert line.startswith("sft: error: ")
        return line.removeprefix("sft: error: ")


@dataclass(frozen=True)
class Person:
    """Someone at a machine: their SFT_HOME."""

    home: Path

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the environment this person's programs run with."""
        return clean_environment(self.home, extra)

    async def run(self, *argv: str, stdin: bytes | None = None, time_limit: float = 60) -> Ran:
        """Run any program as this person (the event loop keeps serving meanwhile)."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=self.environment(),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(stdin), time_limit)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return Ran(process.returncode, stdout.decode(), stderr.decode())

    async def sft(self, *args: str, stdin: bytes | None = None) -> Ran:
        """Run the real `sft` as this person."""
        return await self.run(SFT_BIN, *args, stdin=stdin)
