"""The declared-need check itself: who passes, who is refused and with what, and that a
servicer with an undeclared RPC cannot be served."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from runtime.authorization import Need, Standing, check_need, requires, resource_scope
from runtime.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from runtime.identity import ANONYMOUS, CallerKind, Identity, current_identity
from runtime.peers import Peers, relay
from runtime.server import ServiceBinding
from sft.ca.v1 import ca_service_pb2_grpc

ALICE = Identity(CallerKind.USER, "alice", "acme")
AGENT = Identity(CallerKind.AGENT, "server-1", "acme")
AUTH = Identity(CallerKind.PLATFORM_SERVICE, "auth")


@dataclass
class Roles:
    standing_of: Standing

    async def standing(self, identity: Identity) -> Standing:
        return self.standing_of


MEMBER = Roles(Standing(active=True, team_admin=False))
WEB_ADMIN = Roles(Standing(active=True, team_admin=False, admin_projects=frozenset({"web"})))


def test_resource_scope_reads_team_and_project_and_refuses_other_names() -> None:
    assert resource_scope("teams/acme/projects/web/servers/x").project == "web"
    assert resource_scope("teams/acme/users/bob").team == "acme"
    for bad in ("acme", "projects/web", "teams/"):
        with pytest.raises(InvalidInput, match="teams/TEAM"):
            resource_scope(bad)


@pytest.mark.parametrize(
    ("need", "identity", "resource", "roles", "refusal", "words"),
    [
        (Need.MEMBER, ANONYMOUS, None, MEMBER, Unauthenticated, "sft login"),
        (Need.MEMBER, AGENT, None, MEMBER, PermissionDenied, "not a server's agent"),
        (Need.MEMBER, ALICE, "teams/other", MEMBER, PermissionDenied, "sft use other"),
        (Need.MEMBER, ALICE, None, None, PermissionDenied, "cannot check roles"),
        (
            Need.MEMBER,
            ALICE,
            None,
            Roles(Standing(active=False, team_admin=True)),
            PermissionDenied,
            "disabled",
        ),
        (Need.TEAM_ADMIN, ALICE, "teams/acme", MEMBER, PermissionDenied, "team admin role"),
        (Need.PROJECT_ADMIN, ALICE, "teams/acme/projects/db", WEB_ADMIN, PermissionDenied, "'db'"),
        (Need.AGENT, ALICE, None, MEMBER, PermissionDenied, "agent"),
        (Need.AGENT, ANONYMOUS, None, MEMBER, Unauthenticated, "restart sftd"),
        (Need.PLATFORM_SERVICE, ALICE, None, MEMBER, PermissionDenied, "internal"),
    ],
)
async def test_each_refusal_says_what_is_missing(
    need: Need,
    identity: Identity,
    resource: str | None,
    roles: Roles | None,
    refusal: type[Exception],
    words: str,
) -> None:
    with pytest.raises(refusal, match=words):
        await check_need(need, identity, resource=resource, roles=roles)


async def test_who_passes() -> None:
    await check_need(Need.ANYONE, ANONYMOUS, resource=None, roles=None)
    await check_need(Need.MEMBER, ALICE, resource="teams/acme/users/bob", roles=MEMBER)
    web = "teams/acme/projects/web"
    await check_need(Need.PROJECT_ADMIN, ALICE, resource=web, roles=WEB_ADMIN)
    await check_need(Need.AGENT, AGENT, resource=None, roles=None)
    # A platform service named for the RPC passes any need; one not named does not.
    await check_need(Need.TEAM_ADMIN, AUTH, resource="teams/acme", roles=None, services=("auth",))
    with pytest.raises(PermissionDenied):
        await check_need(Need.PLATFORM_SERVICE, AUTH, resource=None, roles=None, services=("x",))


async def test_the_decorator_checks_before_the_body_runs() -> None:
    ran: list[str] = []

    class Servicer:
        roles = MEMBER

        @requires(Need.TEAM_ADMIN, resource="parent")
        async def Create(self, request: Any, context: Any) -> str:
            ran.append("body")
            return "done"

    @dataclass
    class Request:
        parent: str

    token = current_identity.set(ALICE)
    try:
        with pytest.raises(PermissionDenied):
            await Servicer().Create(Request("teams/acme"), None)
    finally:
        current_identity.reset(token)
    assert ran == []


def test_a_servicer_with_an_undeclared_rpc_is_not_served() -> None:
    class Careless(ca_service_pb2_grpc.CertificateAuthorityServiceServicer):
        async def GetAuthorities(self, request: Any, context: Any) -> Any:
            return None

    with pytest.raises(ValueError, match="GetAuthorities without @requires"):
        ServiceBinding.from_package(
            "ca", "sft.ca.v1", implementations={"CertificateAuthorityService": Careless()}
        )


def test_peers_without_an_address_say_which_setting_to_give(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="ca_address"):
        Peers("inventory", tmp_path).address_of("ca")
    assert Peers("auth", tmp_path, {"ca": "h:1"}).address_of("ca") == "h:1"


def _refusal(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, Conflict),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, Unavailable),
        (grpc.StatusCode.INTERNAL, Unavailable),
    ],
)
def test_a_peers_refusal_is_relayed_and_its_failures_become_unavailable(
    code: grpc.StatusCode, expected: type[Exception]
) -> None:
    error = relay(_refusal(code, "what the peer said"), "ca")
    assert isinstance(error, expected)
    assert "what the peer said" in error.message
