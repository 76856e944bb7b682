"""The daemon's account side: WatchAccounts messages as plain values, only the newest list
kept, and a list the reconciler failed to apply retried, never skipped."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from agent.accounts.model import DesiredState
from agent.broker import wire_broker
from agent.broker_account import BrokerAccount
from agent.config import AgentConfig
from agent.daemon import Daemon, DaemonTimings
from agent.desired_accounts import LatestDesired, desired_state
from agent.state import AgentState
from sft.inventory.v1 import account_pb2, agent_pb2, agent_service_pb2

FAST = DaemonTimings(retry_initial_seconds=0.01, retry_maximum_seconds=0.05)


def _state(revision: int) -> DesiredState:
    return DesiredState(revision=revision, accounts=(), create_missing=True)


def test_a_watch_message_becomes_a_desired_state() -> None:
    message = agent_service_pb2.WatchAccountsResponse(
        revision=9,
        create_missing=False,
        accounts=[
            account_pb2.ServerAccount(
                name="bob",
                user="teams/acme/users/bob",
                uid=60002,
                gid=63002,
                primary_group="bob",
                supplementary_groups=["web", "ops"],
                admin=True,
                windows_name="bob",
                full_name="Bob B",
            )
        ],
    )
    state = desired_state(message)
    assert state.revision == 9 and state.create_missing is False
    (account,) = state.accounts
    assert (account.name, account.uid, account.gid, account.admin) == ("bob", 60002, 63002, True)
    assert account.supplementary_groups == ("ops", "web")
    assert account.user == "teams/acme/users/bob"
    assert account.full_name == "Bob B"


async def test_only_the_newest_list_is_kept() -> None:
    latest = LatestDesired()
    await latest.offer(_state(3))
    await latest.offer(_state(5))
    await latest.offer(_state(4))  # older than what is held: dropped
    assert (await latest.newer_than(0)).revision == 5
    waiter = asyncio.create_task(latest.newer_than(5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await latest.offer(_state(6))
    assert (await asyncio.wait_for(waiter, 1)).revision == 6


class FlakySink:
    """Fails the first `failures` applies, then records."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.applied: list[int] = []
        self.attempts = 0

    async def apply(self, state: DesiredState) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise RuntimeError("useradd failed")
        self.applied.append(state.revision)


def _daemon(tmp_path: Path, sink: FlakySink) -> Daemon:
    config = AgentConfig.model_validate({"StateDir": str(tmp_path / "state")})
    daemon = Daemon(config, accounts=sink, timings=FAST)
    daemon.state.ensure_directory()
    return daemon


async def test_a_failed_apply_is_retried_and_reported_until_it_succeeds(tmp_path: Path) -> None:
    sink = FlakySink(failures=2)
    daemon = _daemon(tmp_path, sink)
    applier = asyncio.create_task(daemon._apply_accounts(0))
    await daemon._desired.offer(_state(7))
    for _ in range(100):
        if sink.applied:
            break
        await asyncio.sleep(0.01)
    applier.cancel()
    assert sink.applied == [7] and sink.attempts == 3
    state = AgentState(daemon.config.state_dir)
    assert state.read_applied_revision() == 7
    report = state.read_status()
    assert report is not None and report.applied_revision == 7 and report.problems == ()


async def test_a_failing_apply_marks_the_agent_degraded(tmp_path: Path) -> None:
    sink = FlakySink(failures=1000)
    daemon = _daemon(tmp_path, sink)
    applier = asyncio.create_task(daemon._apply_accounts(0))
    await daemon._desired.offer(_state(7))
    await asyncio.sleep(0.1)
    applier.cancel()
    assert sink.applied == []
    report = AgentState(daemon.config.state_dir).read_status()
    assert report is not None
    assert report.problems == ("applying revision 7 failed: useradd failed",)
    assert AgentState(daemon.config.state_dir).read_applied_revision() == 0
    status = daemon._agent_status()
    assert status.health == agent_pb2.AGENT_HEALTH_DEGRADED


async def test_a_revision_already_applied_is_not_applied_again(tmp_path: Path) -> None:
    sink = FlakySink(failures=0)
    daemon = _daemon(tmp_path, sink)
    applier = asyncio.create_task(daemon._apply_accounts(7))
    await daemon._desired.offer(_state(7))
    await asyncio.sleep(0.05)
    await daemon._desired.offer(_state(8))
    for _ in range(100):
        if sink.applied:
            break
        await asyncio.sleep(0.01)
    applier.cancel()
    assert sink.applied == [8]


async def test_the_brokers_state_and_problem_reach_the_status_report(tmp_path: Path) -> None:
    config = AgentConfig.model_validate({"StateDir": str(tmp_path / "state"), "Broker": True})
    ended: list[str] = []

    async def fail_closed(reason: str) -> None:
        ended.append(reason)

    own = BrokerAccount("self", os.geteuid(), os.getegid(), separate=False)
    broker = wire_broker(config, fail_closed, account=own, program=tmp_path / "sft-broker")
    daemon = Daemon(config, accounts=FlakySink(failures=0), broker=broker, timings=FAST)
    daemon.state.ensure_directory()
    assert daemon._report.broker_state == "starting"
    assert daemon._report.problems == ("the broker starts once this server is enrolled",)

    supervisor = asyncio.create_task(broker.supervisor.run())
    try:
        for _ in range(100):
            report = daemon.state.read_status()
            if report is not None and "no server certificate yet" in " ".join(report.problems):
                break
            await asyncio.sleep(0.01)
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    assert report is not None and report.broker_state == "starting"
    (problem,) = report.problems
    assert problem.startswith("the broker has no server certificate yet")
    status = daemon._agent_status()
    assert status.health == agent_pb2.AGENT_HEALTH_DEGRADED and not status.broker_running
    assert ended == [], "a broker that never started has no grants to end"
