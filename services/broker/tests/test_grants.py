"""Grant lifecycle (GrantBook) against a stand-in agent: expiry, grace, release, renewal, stop."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from agent.control_client import EnabledAccount
from runtime.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from services.broker.grants import GrantBook
from services.broker.identity import Caller
from sft.agent.v1 import agent_control_pb2

SESSION_ENDED = agent_control_pb2.DISABLE_REASON_SESSION_ENDED
LATER = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
ALICE = Caller("acme", "win", "alice", "alice", LATER)
BOB = Caller("acme", "win", "bob", "bob", LATER)


class Agent:
    """Records enable/disable calls like sftd's control channel would receive them."""

    def __init__(self) -> None:
        self.enabled: list[tuple[str, str, int]] = []
        self.disabled: list[tuple[str, str, int]] = []
        self.down = False

    async def enable_account(
        self, account_name: str, grant_id: str, ttl_seconds: int
    ) -> EnabledAccount:
        if self.down:
            raise Unavailable("sftd is down")
        renewal = any(g == grant_id for _, g, _ in self.enabled)
        self.enabled.append((account_name, grant_id, ttl_seconds))
        return EnabledAccount(None if renewal else "pw-" + grant_id, LATER)

    async def disable_account(
        self,
        account_name: str,
        grant_id: str,
        reason: agent_control_pb2.DisableReason.ValueType = SESSION_ENDED,
    ) -> bool:
        self.disabled.append((account_name, grant_id, reason))
        return True

    async def disabled_with(self, grant_id: str) -> int:
        async with asyncio.timeout(5):
            while True:
                for _, g, reason in self.disabled:
                    if g == grant_id:
                        return reason
                await asyncio.sleep(0.01)


@pytest.fixture
def agent() -> Agent:
    return Agent()


def book(agent: Agent, grant: float = 300, grace: float = 0.2) -> GrantBook:
    return GrantBook(agent, grant_seconds=grant, grace_seconds=grace)


async def test_a_grant_without_tunnels_expires(agent: Agent) -> None:
    grants = book(agent, grant=0.2)
    issued = await grants.request(ALICE)
    assert issued.password == "pw-" + issued.grant_id
    assert "pw-" not in repr(issued)
    assert agent.enabled == [("alice", issued.grant_id, 1)]
    assert await agent.disabled_with(issued.grant_id) == agent_control_pb2.DISABLE_REASON_EXPIRED
    with pytest.raises(FailedPrecondition):
        grants.find(issued.grant_id, ALICE)


async def test_the_grace_period_starts_when_the_last_tunnel_closes(agent: Agent) -> None:
    grants = book(agent, grant=0.1, grace=0.3)
    issued = await grants.request(ALICE)
    grant = grants.find(issued.grant_id, ALICE)
    grants.open_tunnel(grant)
    grants.open_tunnel(grant)
    await asyncio.sleep(0.3)  # past expire_time: open tunnels keep the grant
    grants.close_tunnel(grant)
    await asyncio.sleep(0.4)  # one tunnel still open: no grace yet
    assert not agent.disabled
    grants.close_tunnel(grant)
    await asyncio.sleep(0.1)
    assert not agent.disabled  # inside the grace period
    reason = await agent.disabled_with(issued.grant_id)
    assert reason == agent_control_pb2.DISABLE_REASON_SESSION_ENDED


async def test_a_reconnect_inside_the_grace_period_keeps_the_grant(agent: Agent) -> None:
    grants = book(agent, grace=0.3)
    issued = await grants.request(ALICE)
    grant = grants.find(issued.grant_id, ALICE)
    grants.open_tunnel(grant)
    grants.close_tunnel(grant)
    await asyncio.sleep(0.15)
    grants.open_tunnel(grants.find(issued.grant_id, ALICE))
    await asyncio.sleep(0.4)
    assert not agent.disabled
    grants.close_tunnel(grant)
    await agent.disabled_with(issued.grant_id)


async def test_release_without_tunnels_disables_before_it_returns(agent: Agent) -> None:
    grants = book(agent)
    issued = await grants.request(ALICE)
    await grants.release(issued.grant_id, ALICE)
    assert agent.disabled == [("alice", issued.grant_id, agent_control_pb2.DISABLE_REASON_RELEASED)]
    await grants.release(issued.grant_id, ALICE)  # idempotent
    assert len(agent.disabled) == 1


async def test_release_with_tunnels_open_disables_when_the_last_closes_without_grace(
    agent: Agent,
) -> None:
    grants = book(agent, grace=60)
    issued = await grants.request(ALICE)
    grant = grants.find(issued.grant_id, ALICE)
    grants.open_tunnel(grant)
    await grants.release(issued.grant_id, ALICE)
    assert not agent.disabled
    with pytest.raises(FailedPrecondition, match="released"):
        grants.find(issued.grant_id, ALICE)
    grants.close_tunnel(grant)
    assert await agent.disabled_with(issued.grant_id) == agent_control_pb2.DISABLE_REASON_RELEASED


async def test_only_the_owner_may_use_or_release_a_grant(agent: Agent) -> None:
    grants = book(agent)
    issued = await grants.request(ALICE)
    with pytest.raises(PermissionDenied):
        grants.find(issued.grant_id, BOB)
    with pytest.raises(PermissionDenied):
        await grants.release(issued.grant_id, BOB)
    with pytest.raises(NotFound):
        grants.find("nope", ALICE)
    await grants.release("nope", ALICE)
    assert not agent.disabled


async def test_open_tunnels_renew_the_agents_deadline(agent: Agent) -> None:
    grants = book(agent, grant=1.5)
    issued = await grants.request(ALICE)
    grant = grants.find(issued.grant_id, ALICE)
    grants.open_tunnel(grant)
    await asyncio.sleep(1.2)
    renewals = [call for call in agent.enabled if call[1] == issued.grant_id][1:]
    assert len(renewals) >= 2
    assert all(ttl == 2 for _, _, ttl in renewals)
    grants.close_tunnel(grant)
    await grants.stop()


async def test_a_failed_renewal_keeps_the_grant_and_tries_again(agent: Agent) -> None:
    grants = book(agent, grant=1.5)
    issued = await grants.request(ALICE)
    grants.open_tunnel(grants.find(issued.grant_id, ALICE))
    agent.down = True
    await asyncio.sleep(0.6)
    agent.down = False
    await asyncio.sleep(0.6)
    assert len(agent.enabled) >= 2
    assert grants.find(issued.grant_id, ALICE).open_tunnels == 1
    await grants.stop()


async def test_stop_ends_every_grant_and_refuses_new_ones(agent: Agent) -> None:
    grants = book(agent)
    first = await grants.request(ALICE)
    second = await grants.request(BOB)
    grants.open_tunnel(grants.find(second.grant_id, BOB))
    await grants.stop()
    stopping = agent_control_pb2.DISABLE_REASON_BROKER_STOPPING
    assert sorted(agent.disabled) == sorted(
        [("alice", first.grant_id, stopping), ("bob", second.grant_id, stopping)]
    )
    with pytest.raises(Unavailable):
        await grants.request(ALICE)


async def test_agent_refusals_pass_through_and_leave_no_grant(agent: Agent) -> None:
    grants = book(agent)
    agent.down = True
    with pytest.raises(Unavailable):
        await grants.request(ALICE)
    assert grants.live() == []
