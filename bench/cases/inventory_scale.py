"""What the inventory costs at fleet scale: one team of 10,000 people and 100,000 servers.

The platform under test is CA, inventory and auth in one spawned process, wired like
tests.support.platform.running_platform, on a throwaway PostgreSQL seeded directly with
SQL (SQLAlchemy Core bulk inserts, then ANALYZE as autovacuum would): one team, 10,000
users (uids from 60001) all in group `everyone`, which has a USER grant on project
`big`; 100,000 servers spread over four projects, each with its ServerName rows; an
access-token row for each server whose agent the benchmark plays (recorded the way
TokenService records one after checking an agent's assertion; the agent keys seeded
are random Ed25519 encodings that never sign anything). The team admin and one member
get their devices and tokens through the real API (EnrollDevice, CreateAccessToken).

Candidates and the baselines measured beside them in the same run:

- ListServers, pages of 100 walked to the end and round again, as the team admin
  (every project) and as a member whose one grant shows `big`, at 1 and 16 callers:
  p99 within 50 ms. Baseline: the empty RPC (grpc.health.v1 Check) on the same channel
  with the same bearer token (so it pays the same token lookup), back to back.
- ResolveServer of random existing canonical names: p99 within 10 ms at 1 caller.
- WatchAccounts of a server in `big` (10,000 accounts): time to the first message,
  the median of several, with the list computed afresh (team revision bumped before
  each call) and shared (same revision): within 1 s. Baseline: the empty RPC's median.
- EnrollServer with one multi-use token at 16 callers, fresh agent and host keys each:
  calls/s against the empty RPC's rate (the issue sets no target ratio).
- The fleet: N simulated agents in two load processes, 100 streams per connection, each
  holding one WatchAccounts stream and heartbeating every 30 s: the platform process's
  RSS and CPU over a steady window, and the time one AddGroupMember (by the admin,
  through the API) takes to reach every stream: within 10 s. The load decodes only the
  revision of each message (the agent's parse cost is the snapshot row's); at most 64
  streams per load process wait for their first message at once, as agents
  reconnecting with backoff would.

The issue's fleet is 10,000 agents; the default is 2,000 (quick: 500), the largest a
2-core machine held: the one platform process serves about 110 heartbeats/s there, and
10,000 agents at one per 30 s ask 333/s, so heartbeats queue until they time out (and
the run takes over ten minutes). `SFT_BENCH_INVENTORY_AGENTS=N` sets N.
Every wait is bounded; the server and load processes are stopped in `finally`, are
daemons, and exit by themselves if the benchmark process goes away.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import queue
import random
import resource
import secrets
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import insert, select, text, union_all, update

from bench.harness import LoadStats, Result, case, closed_loop, print_table
from runtime.database import Database
from runtime.service_identity import service_channel
from runtime.tls import ca_sha256, service_tls_files
from services.auth.access_tokens import (
    ACCESS_TOKEN_TTL_SECONDS,
    hash_access_token,
    new_access_token,
)
from services.auth.enrollment_codes import issue_enrollment_code
from services.auth.models import AccessTokenRow
from services.inventory.models import (
    Grant,
    GrantRole,
    Group,
    GroupMember,
    Project,
    Server,
    ServerName,
    Team,
    User,
    UserKind,
    UserStatus,
)
from sft.auth.v1 import (
    device_service_pb2,
    device_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from sft.ca.v1 import ca_service_pb2, ca_service_pb2_grpc
from sft.inventory.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    enrollment_token_pb2,
    enrollment_token_service_pb2,
    enrollment_token_service_pb2_grpc,
    group_service_pb2,
    group_service_pb2_grpc,
    server_pb2,
    server_service_pb2,
    server_service_pb2_grpc,
)
from tests.support.platform import Device, public_key_line
from tests.support.postgres import postgres_server
from tests.support.real_software import find_program

__all__ = ["FULL", "QUICK", "Scale", "inventory_scale", "metrics", "run"]

CASE = "inventory_scale"
TEAM = "scale"
BIG = "big"
#: Servers are dealt round-robin over these; `landing` takes the benchmark's enrollments.
SERVER_PROJECTS = (BIG, "web", "db", "ops")
LANDING = "landing"
GROUP = "everyone"
ADMIN = "admin"
MEMBER = "user00001"
#: Not in any group until the fleet phase's grant change adds them.
NEWCOMER = "newcomer"
FIRST_UID = 60001
FIRST_GID = 63001
LEVELS = (1, 16)
PAGE_SIZE = 100
ENROLL_CONCURRENCY = 16
#: The issue's targets.
LIST_P99_MS = 50.0
RESOLVE_P99_MS = 10.0
RESOLVE_TARGET_LEVEL = 1
SNAPSHOT_MS = 1000.0
PROPAGATION_SECONDS = 10.0
LOAD_PROCESSES = 2
STREAMS_PER_CHANNEL = 100
#: Streams of one load process waiting for their first message at once.
CONNECTING_PER_PROCESS = 64
# Nothing should take this long; a hung call fails the case instead of stalling it.
CALL_TIMEOUT_SECONDS = 30.0
STARTUP_SECONDS = 90.0
STOP_SECONDS = 15.0
EMPTY_RPC = "empty RPC (health Check), same channel and token"
AGENTS_OVERRIDE = "SFT_BENCH_INVENTORY_AGENTS"
PLATFORM_LOG = "platform.log"
LINUX = server_pb2.OPERATING_SYSTEM_LINUX


@dataclass(frozen=True)
class Scale:
    """How big the world is and how long each phase runs (seconds unless named)."""

    users: int
    servers: int
    agents: int
    loop_seconds: float
    warmup_seconds: float
    snapshots: int
    enroll_seconds: float
    heartbeat_seconds: float
    idle_seconds: float
    steady_seconds: float
    connect_limit_seconds: float
    propagation_limit_seconds: float
    settle_seconds: float
    resolve_names: int = 2000


#: The issue asks for a fleet of 10,000 agents (see the module docstring for why the
#: default run simulates fewer; SFT_BENCH_INVENTORY_AGENTS=10000 runs the issue's size).
ISSUE_AGENTS = 10_000
FULL = Scale(
    users=10_000,
    servers=100_000,
    agents=2_000,
    loop_seconds=3.0,
    warmup_seconds=0.5,
    snapshots=7,
    enroll_seconds=10.0,
    heartbeat_seconds=30.0,
    idle_seconds=5.0,
    steady_seconds=30.0,
    connect_limit_seconds=240.0,
    propagation_limit_seconds=120.0,
    settle_seconds=3.0,
)
QUICK = Scale(
    users=1_000,
    servers=4_000,
    agents=500,
    loop_seconds=0.3,
    warmup_seconds=0.2,
    snapshots=3,
    enroll_seconds=1.0,
    heartbeat_seconds=10.0,
    idle_seconds=0.5,
    steady_seconds=2.0,
    connect_limit_seconds=30.0,
    propagation_limit_seconds=20.0,
    settle_seconds=0.5,
    resolve_names=200,
)


def metrics(scale: Scale) -> list[str]:
    """Return the metric names a run at `scale` reports, in order."""
    names = [f"ListServers p99 @{level}, {who}" for who in ("admin", "member") for level in LEVELS]
    names += [f"ResolveServer p99 @{level}" for level in LEVELS]
    names += [
        "WatchAccounts first message, list computed",
        "WatchAccounts first message, list shared",
        f"EnrollServer calls/s @{ENROLL_CONCURRENCY}",
        f"fleet connect: every first message, {scale.agents} agents",
        f"platform RSS, {scale.agents} agents streaming",
        f"platform CPU, steady {scale.steady_seconds:g} s, {scale.agents} agents",
        f"grant change reaches all {scale.agents} streams",
    ]
    return names


# --- processes --------------------------------------------------------------------------


def _raise_open_files() -> None:
    """Raise this process's open-file limit to its hard limit (streams hold sockets)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _exit_with_parent() -> None:
    """Exit this process as soon as the process that spawned it is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@dataclass(frozen=True)
class Listening:
    """Where the platform process listens, and its PID (for RSS and CPU)."""

    port: int
    internal_port: int
    pid: int


def _platform_child(
    database_url: str, directory: str, ready: multiprocessing.Queue[Listening], stop: Event
) -> None:
    """Run the whole platform in this (spawned) process until `stop` is set."""
    _raise_open_files()
    _exit_with_parent()
    # The platform logs (JSON, warning and up) to a file the benchmark summarizes after.
    with (Path(directory) / PLATFORM_LOG).open("w", buffering=1) as log:
        sys.stdout = log
        asyncio.run(_serve(database_url, directory, ready, stop))


async def _serve(
    database_url: str, directory: str, ready: multiprocessing.Queue[Listening], stop: Event
) -> None:
    """Migrate and serve every service on loopback, the way running_platform wires them."""
    from runtime.logging import configure_logging
    from tests.support.platform import running_platform

    configure_logging("warning", "json")
    async with running_platform(database_url, Path(directory)) as platform:
        ready.put(Listening(platform.server.port, platform.server.internal_port, os.getpid()))
        await asyncio.to_thread(stop.wait)


def _log_summary(path: Path) -> tuple[Counter[tuple[str, str]], str]:
    """Return how often the platform logged each (level, first line of event), and the
    first error in full (event and exception, shortened)."""
    counts: Counter[tuple[str, str]] = Counter()
    first_error = ""
    if not path.exists():
        return counts, first_error
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            counts["unparsed", line[:120]] += 1
            continue
        if isinstance(entry, dict):
            level = str(entry.get("level", "?"))
            event = str(entry.get("event", "")).splitlines()
            counts[level, (event or [""])[0][:120]] += 1
            if level in ("error", "critical") and not first_error:
                first_error = " | ".join(
                    f"{key}={entry[key]}"
                    for key in ("event", "exception", "exc_info", "method")
                    if entry.get(key)
                )[:1500]
    return counts, first_error


def _stop(process: BaseProcess) -> None:
    """Wait for `process` to end; kill it if it does not in time."""
    if process.pid is None:
        return
    process.join(STOP_SECONDS)
    if process.is_alive():
        process.kill()
        process.join(5)


def _wait_listening(process: BaseProcess, ready: multiprocessing.Queue[Listening]) -> Listening:
    """Return what the platform process reports, or raise if it dies or stalls first."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            return ready.get(timeout=0.2)
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(
                    f"the platform process exited with code {process.exitcode} before "
                    "listening; its traceback is above"
                ) from None
    raise RuntimeError(f"the platform process did not listen within {STARTUP_SECONDS:g} s")


@asynccontextmanager
async def _platform(database_url: str, directory: Path) -> AsyncIterator[Listening]:
    """Serve the platform on `database_url` in a spawned process; stop it afterwards."""
    ctx = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue[Listening] = ctx.Queue()
    stop = ctx.Event()
    process = ctx.Process(
        target=_platform_child,
        args=(database_url, str(directory), ready, stop),
        name="sft-bench-platform",
        daemon=True,
    )
    process.start()
    try:
        yield await asyncio.to_thread(_wait_listening, process, ready)
    finally:
        stop.set()
        await asyncio.to_thread(_stop, process)


@dataclass(frozen=True)
class ProcessSample:
    """CPU seconds used so far and memory of one process, read from /proc."""

    at: float
    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int


def _sample(pid: int) -> ProcessSample:
    """Return `pid`'s CPU time (all threads) and its resident and peak resident memory."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    memory = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0]) * 1024
    return ProcessSample(time.monotonic(), cpu, memory["VmRSS"], memory["VmHWM"])


def _cpu_percent(before: ProcessSample, after: ProcessSample) -> float:
    """Return CPU use between two samples, in percent of one core."""
    return 100.0 * (after.cpu_seconds - before.cpu_seconds) / max(1e-9, after.at - before.at)


def _machine_busy() -> tuple[float, float]:
    """Return (busy, total) jiffies of all CPUs so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


# --- seeding ----------------------------------------------------------------------------


def _uuid() -> str:
    return str(uuid.uuid4())


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _random_key() -> tuple[str, str]:
    """Return an `ssh-ed25519` line of 32 random bytes and its SHA256 fingerprint.

    Not necessarily a point on the curve: seeded agents never sign (their tokens are
    recorded directly), and nothing parses a stored key back. It costs microseconds,
    where generating 100,000 real keys takes most of a minute.
    """
    blob = _ssh_string(b"ssh-ed25519") + _ssh_string(secrets.token_bytes(32))
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return "ssh-ed25519 " + base64.b64encode(blob).decode(), f"SHA256:{digest}"


def _user_name(index: int) -> str:
    return ADMIN if index == 0 else f"user{index:05d}"


@dataclass(frozen=True)
class Agent:
    """A seeded server of project `big` whose agent the benchmark plays."""

    server: str
    hostname: str
    canonical_name: str
    address: str
    token: str


@dataclass(frozen=True)
class Seeded:
    """What the benchmark needs to know about the world it seeded."""

    team_id: str
    agents: tuple[Agent, ...]
    canonical_names: tuple[str, ...]
    rows: int
    seconds: float


def _address(index: int) -> str:
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


async def _insert(database: Database, table: Any, rows: Sequence[dict[str, Any]]) -> int:
    """Insert `rows` into `table` in batches, each batch its own transaction."""
    batch = 5000
    for start in range(0, len(rows), batch):
        async with database.sessions.begin() as session:
            await session.execute(insert(table), list(rows[start : start + batch]))
    return len(rows)


async def _seed_directory(database: Database, scale: Scale, now: dt.datetime) -> tuple[str, int]:
    """Insert the team, its people, the group, the projects and the grant; return the team id."""
    team_id, group_id = _uuid(), _uuid()
    project_ids = {name: _uuid() for name in (*SERVER_PROJECTS, LANDING)}
    rows = await _insert(
        database, Team, [{"id": team_id, "name": TEAM, "created_at": now, "accounts_revision": 1}]
    )
    people = [
        {
            "id": _uuid(),
            "team_id": team_id,
            "name": name,
            "unix_uid": FIRST_UID + index,
            "unix_gid": FIRST_GID + index,
            "windows_name": name,
            "status": UserStatus.ACTIVE,
            "team_admin": index == 0,
            "created_at": now,
            "kind": UserKind.HUMAN,
            "display_name": f"Person {index:05d}",
            "email": f"{name}@scale.example",
            "updated_at": None,
        }
        for index, name in enumerate([*(_user_name(i) for i in range(scale.users)), NEWCOMER])
    ]
    rows += await _insert(database, User, people)
    rows += await _insert(
        database,
        Group,
        [{"id": group_id, "team_id": team_id, "name": GROUP, "description": "", "created_at": now}],
    )
    rows += await _insert(
        database,
        GroupMember,
        [
            {"group_id": group_id, "user_id": person["id"], "created_at": now}
            for person in people[: scale.users]
        ],
    )
    rows += await _insert(
        database,
        Project,
        [
            {
                "id": project_id,
                "team_id": team_id,
                "name": name,
                "description": "",
                "certificate_ttl_seconds": 600,
                "certificate_max_ttl_seconds": 3600,
                "create_server_users": True,
                "permit_port_forwarding": False,
                "permit_agent_forwarding": False,
                "rdp_enabled": True,
                "required_bastion": "",
                "allowed_admin_account_names": [],
                "created_at": now,
                "updated_at": None,
            }
            for name, project_id in project_ids.items()
        ],
    )
    rows += await _insert(
        database,
        Grant,
        [
            {
                "id": _uuid(),
                "project_id": project_ids[BIG],
                "group_id": group_id,
                "role": GrantRole.USER,
                "created_at": now,
            }
        ],
    )
    return team_id, rows


async def _seed_servers(
    database: Database, scale: Scale, team_id: str, now: dt.datetime, agents: int
) -> tuple[list[Agent], list[str], int]:
    """Insert the servers, their names, and access tokens for `agents` servers of `big`."""
    async with database.sessions() as session:
        project_ids = {
            name: project_id
            for name, project_id in await session.execute(
                select(Project.name, Project.id).where(Project.team_id == team_id)
            )
        }
    servers: list[dict[str, Any]] = []
    tokens: list[dict[str, Any]] = []
    chosen: list[Agent] = []
    canonical: list[str] = []
    expire = now + dt.timedelta(seconds=ACCESS_TOKEN_TTL_SECONDS)
    for index in range(scale.servers):
        project = SERVER_PROJECTS[index % len(SERVER_PROJECTS)]
        server_id = _uuid()
        hostname = f"srv{index:06d}"
        canonical_name = f"{hostname}.{project}.scale.example"
        address = _address(index)
        key_line, key_fingerprint = _random_key()
        servers.append(
            {
                "id": server_id,
                "team_id": team_id,
                "project_id": project_ids[project],
                "hostname": hostname,
                "canonical_name": canonical_name,
                "alt_names": [],
                "labels": {"env": ("prod", "staging")[index % 2], "rack": f"r{index % 40}"},
                "os": "linux",
                "addresses": [address],
                "access_address": "",
                "ssh_port": 22,
                "broker_port": 0,
                "bastion": "",
                "host_key_fingerprints": [_random_key()[1]],
                "agent_public_key": key_line,
                "agent_key_fingerprint": key_fingerprint,
                "agent_version": "0.1.0",
                "enrollment_token_id": None,
                "last_seen_at": now,
                # Distinct and increasing, as enrollments over time would be.
                "created_at": now - dt.timedelta(seconds=scale.servers - index),
                "updated_at": None,
            }
        )
        canonical.append(canonical_name)
        if project == BIG and len(chosen) < agents:
            token = new_access_token()
            resource_name = f"teams/{TEAM}/projects/{BIG}/servers/{server_id}"
            tokens.append(
                {
                    "id": secrets.token_hex(8),
                    "token_hash": hash_access_token(token),
                    "kind": "server",
                    "team": TEAM,
                    "principal": resource_name,
                    "device_id": None,
                    "create_time": now,
                    "expire_time": expire,
                    "service_key_id": None,
                }
            )
            chosen.append(Agent(resource_name, hostname, canonical_name, address, token))
    if len(chosen) < agents:
        raise ValueError(
            f"{scale.servers} servers put only {len(chosen)} in project {BIG!r}; the fleet "
            f"needs {agents}: seed more servers or simulate fewer agents"
        )
    rows = await _insert(database, Server, servers)
    rows += await _insert_names(database, team_id)
    rows += await _insert(database, AccessTokenRow, tokens)
    picker = random.Random(7)  # noqa: S311 (a repeatable sample, not a secret)
    sample = picker.sample(canonical, min(scale.resolve_names, len(canonical)))
    return chosen, sample, rows


async def _insert_names(database: Database, team_id: str) -> int:
    """Insert every server's names (canonical, hostname, its one address) inside PostgreSQL.

    What enrollment's name sync writes, one row per name, without 300,000 rows' worth of
    parameters crossing the wire.
    """
    of_team = Server.team_id == team_id
    names = union_all(
        select(Server.id, Server.canonical_name, Server.team_id).where(of_team),
        select(Server.id, Server.hostname, Server.team_id).where(of_team),
        select(Server.id, Server.addresses[0].as_string(), Server.team_id).where(of_team),
    )
    async with database.sessions.begin() as session:
        result = await session.execute(
            insert(ServerName).from_select(["server_id", "name", "team_id"], names)
        )
    return int(getattr(result, "rowcount", 0))


async def _analyze(database: Database) -> None:
    """Refresh the planner's statistics, as autovacuum would after a bulk load."""
    if database.engine.dialect.name == "postgresql":
        async with database.engine.connect() as connection:
            await connection.execute(text("ANALYZE"))
            await connection.commit()


async def _create_authorities(listening: Listening, tls_dir: Path) -> None:
    """Create every project's CA authorities, called as the inventory service would."""
    address = f"127.0.0.1:{listening.internal_port}"
    async with service_channel(address, service_tls_files(tls_dir, "inventory")) as channel:
        ca = ca_service_pb2_grpc.CertificateAuthorityServiceStub(channel)
        for project in (*SERVER_PROJECTS, LANDING):
            await ca.CreateProjectAuthorities(
                ca_service_pb2.CreateProjectAuthoritiesRequest(
                    project=f"teams/{TEAM}/projects/{project}"
                ),
                timeout=CALL_TIMEOUT_SECONDS,
            )


async def _seed(
    database: Database, listening: Listening, tls_dir: Path, scale: Scale, agents: int
) -> Seeded:
    """Seed the directory, the projects' authorities, then the servers; analyze."""
    began = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    team_id, rows = await _seed_directory(database, scale, now)
    await _create_authorities(listening, tls_dir)
    # One spare beyond the fleet: the snapshot phase's agent is the first of them.
    chosen, sample, more = await _seed_servers(database, scale, team_id, now, agents)
    await _analyze(database)
    return Seeded(team_id, tuple(chosen), tuple(sample), rows + more, time.perf_counter() - began)


# --- callers ----------------------------------------------------------------------------


class Callers:
    """Channels on the public listener, one per bearer token, closed together."""

    def __init__(self, listening: Listening, ca_pem: bytes) -> None:
        self.address = f"127.0.0.1:{listening.port}"
        self.ca_pem = ca_pem
        self._channels: list[grpc.aio.Channel] = []

    def channel(self, token: str | None = None) -> grpc.aio.Channel:
        """Return a new channel; with `token`, every call on it carries the token."""
        credentials = grpc.ssl_channel_credentials(self.ca_pem)
        if token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        channel = grpc.aio.secure_channel(self.address, credentials)
        self._channels.append(channel)
        return channel

    async def close(self) -> None:
        """Close every channel handed out."""
        for channel in self._channels:
            await channel.close()
        self._channels.clear()


async def _person_token(database: Database, callers: Callers, user: str) -> str:
    """Enroll a device for `user` through the API and return its bearer token.

    The one-time code is issued in the database, as `sft-platform init` does for the
    first admin; EnrollDevice and CreateAccessToken are the real RPCs.
    """
    async with database.sessions.begin() as session:
        issued = await issue_enrollment_code(
            session,
            team=TEAM,
            user=f"teams/{TEAM}/users/{user}",
            created_by="bench",
            ca_sha256=ca_sha256(callers.ca_pem),
        )
    key = ed25519.Ed25519PrivateKey.generate()
    channel = callers.channel()
    reply = await device_service_pb2_grpc.DeviceServiceStub(channel).EnrollDevice(
        device_service_pb2.EnrollDeviceRequest(
            team=f"teams/{TEAM}",
            code=issued.code,
            public_key=public_key_line(key),
            hostname="bench",
            os="linux",
        ),
        timeout=CALL_TIMEOUT_SECONDS,
    )
    device = Device(key, reply.device.name, reply.device.public_key_fingerprint, TEAM, user)
    token = await token_service_pb2_grpc.TokenServiceStub(channel).CreateAccessToken(
        token_service_pb2.CreateAccessTokenRequest(assertion=device.assertion()),
        timeout=CALL_TIMEOUT_SECONDS,
    )
    return str(token.access_token)


def _empty(channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
    """Return the baseline call: a health Check on `channel`."""
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")
    return lambda: health.Check(request, timeout=CALL_TIMEOUT_SECONDS)


def _notes(
    candidate: LoadStats, baseline: LoadStats, **more: float | str
) -> dict[str, float | str]:
    return {
        "calls": candidate.calls,
        "p50_ms": round(candidate.p50_ms, 2),
        "baseline_calls": baseline.calls,
        "baseline_p50_ms": round(baseline.p50_ms, 2),
        **more,
    }


# --- ListServers and ResolveServer ------------------------------------------------------


class ServerWalk:
    """Walks ListServers pages to the end and round again, one cursor per caller."""

    def __init__(self, channel: grpc.aio.Channel, visible: str | None) -> None:
        self._servers = server_service_pb2_grpc.ServerServiceStub(channel)
        self._visible = visible
        self._cursors: list[str] = []
        self.pages = 0
        self.wrapped = 0
        #: Servers of projects the caller should not see (must stay 0).
        self.foreign = 0

    async def __call__(self) -> None:
        """Fetch the next page of one cursor (a free one, or a new walk from the start)."""
        cursor = self._cursors.pop() if self._cursors else ""
        reply = await self._servers.ListServers(
            server_service_pb2.ListServersRequest(
                parent=f"teams/{TEAM}", page_size=PAGE_SIZE, page_token=cursor
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        self.pages += 1
        self.wrapped += not reply.next_page_token
        if self._visible is not None:
            self.foreign += sum(1 for s in reply.servers if s.project != self._visible)
        self._cursors.append(reply.next_page_token)


async def _list_servers(callers: Callers, tokens: dict[str, str], scale: Scale) -> list[Result]:
    """ListServers p99 as the admin and as a member, at each level, beside the empty RPC."""
    results = []
    for who, token, visible in (
        ("admin", tokens[ADMIN], None),
        ("member", tokens[MEMBER], f"teams/{TEAM}/projects/{BIG}"),
    ):
        channel = callers.channel(token)
        for level in LEVELS:
            # Back to back at each level, so drift on a shared machine hits both alike.
            empty = await closed_loop(
                _empty(channel), level, scale.loop_seconds, scale.warmup_seconds
            )
            walk = ServerWalk(channel, visible)
            listed = await closed_loop(walk, level, scale.loop_seconds, scale.warmup_seconds)
            if walk.foreign:
                print(
                    f"- {CASE}: ListServers showed {who} {walk.foreign} servers of projects "
                    "it has no grant on",
                    file=sys.stderr,
                )
            results.append(
                Result(
                    CASE,
                    f"ListServers p99 @{level}, {who}",
                    "ms",
                    listed.p99_ms,
                    empty.p99_ms,
                    EMPTY_RPC,
                    "lower",
                    None,
                    _notes(
                        listed,
                        empty,
                        page_size=PAGE_SIZE,
                        pages=walk.pages,
                        walks_finished=walk.wrapped,
                        foreign_servers=walk.foreign,
                        servers_visible=scale.servers // len(SERVER_PROJECTS)
                        if visible
                        else scale.servers,
                    ),
                    absolute_target=LIST_P99_MS,
                )
            )
    return results


async def _resolve(
    callers: Callers, tokens: dict[str, str], names: Sequence[str], scale: Scale
) -> list[Result]:
    """ResolveServer of random canonical names as the admin, beside the empty RPC."""
    channel = callers.channel(tokens[ADMIN])
    servers = server_service_pb2_grpc.ServerServiceStub(channel)
    picker = random.Random(11)  # noqa: S311 (a repeatable choice, not a secret)
    unresolved = 0

    async def resolve() -> None:
        nonlocal unresolved
        name = picker.choice(names)
        reply = await servers.ResolveServer(
            server_service_pb2.ResolveServerRequest(parent=f"teams/{TEAM}", query=name),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        unresolved += reply.server.canonical_name != name

    results = []
    for level in LEVELS:
        empty = await closed_loop(_empty(channel), level, scale.loop_seconds, scale.warmup_seconds)
        found = await closed_loop(resolve, level, scale.loop_seconds, scale.warmup_seconds)
        results.append(
            Result(
                CASE,
                f"ResolveServer p99 @{level}",
                "ms",
                found.p99_ms,
                empty.p99_ms,
                EMPTY_RPC,
                "lower",
                None,
                _notes(found, empty, names=len(names), wrong_or_ambiguous=unresolved),
                absolute_target=RESOLVE_P99_MS if level == RESOLVE_TARGET_LEVEL else None,
            )
        )
    if unresolved:
        print(
            f"- {CASE}: {unresolved} ResolveServer calls did not return the name asked",
            file=sys.stderr,
        )
    return results


# --- WatchAccounts: the first message ---------------------------------------------------


async def _first_message(agents: agent_service_pb2_grpc.AgentServiceStub) -> tuple[float, int]:
    """Return seconds from calling WatchAccounts to its first message, and its account count."""
    started = time.perf_counter()
    call = agents.WatchAccounts(agent_service_pb2.WatchAccountsRequest())
    try:
        reply = await asyncio.wait_for(call.read(), CALL_TIMEOUT_SECONDS)
        elapsed = time.perf_counter() - started
    finally:
        call.cancel()
    if reply is grpc.aio.EOF:
        raise RuntimeError("WatchAccounts ended before its first message")
    return elapsed, len(reply.accounts)


async def _bump_revision(database: Database, team_id: str) -> None:
    """Advance the team's accounts revision (so the next stream computes its list anew)."""
    async with database.sessions.begin() as session:
        await session.execute(
            update(Team)
            .where(Team.id == team_id)
            .values(accounts_revision=Team.accounts_revision + 1)
        )


async def _snapshots(
    callers: Callers, database: Database, seeded: Seeded, scale: Scale
) -> list[Result]:
    """Time WatchAccounts' first message with the list computed and shared."""
    agent = seeded.agents[-1]
    channel = callers.channel(agent.token)
    agents = agent_service_pb2_grpc.AgentServiceStub(channel)
    empty = await closed_loop(_empty(channel), 1, scale.loop_seconds, scale.warmup_seconds)
    computed, shared, counts = [], [], set()
    for _ in range(scale.snapshots):
        await _bump_revision(database, seeded.team_id)
        seconds, count = await _first_message(agents)
        computed.append(seconds)
        counts.add(count)
        seconds, count = await _first_message(agents)
        shared.append(seconds)
        counts.add(count)
    results = []
    for metric, samples in (("list computed", computed), ("list shared", shared)):
        results.append(
            Result(
                CASE,
                f"WatchAccounts first message, {metric}",
                "ms",
                statistics.median(samples) * 1000,
                empty.p50_ms,
                "empty RPC p50, same channel and token",
                "lower",
                None,
                {
                    "samples": len(samples),
                    "max_ms": round(max(samples) * 1000, 1),
                    "accounts": ",".join(str(c) for c in sorted(counts)),
                    "expected_accounts": scale.users,
                },
                absolute_target=SNAPSHOT_MS,
            )
        )
    if counts != {scale.users}:
        print(
            f"- {CASE}: WatchAccounts listed {sorted(counts)} accounts; {scale.users} expected",
            file=sys.stderr,
        )
    return results


# --- EnrollServer -----------------------------------------------------------------------


def _key_line() -> str:
    """Return a fresh Ed25519 public key as one OpenSSH line."""
    return (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


async def _enrollments(callers: Callers, tokens: dict[str, str], scale: Scale) -> list[Result]:
    """EnrollServer with one multi-use token at 16 callers, beside the empty RPC."""
    admin = callers.channel(tokens[ADMIN])
    created = await enrollment_token_service_pb2_grpc.EnrollmentTokenServiceStub(
        admin
    ).CreateEnrollmentToken(
        enrollment_token_service_pb2.CreateEnrollmentTokenRequest(
            parent=f"teams/{TEAM}/projects/{LANDING}",
            enrollment_token=enrollment_token_pb2.EnrollmentToken(
                description="inventory_scale benchmark", max_uses=0
            ),
        ),
        timeout=CALL_TIMEOUT_SECONDS,
    )
    channel = callers.channel()
    agents = agent_service_pb2_grpc.AgentServiceStub(channel)
    counter = iter(range(1, 1 << 30))

    async def enroll() -> None:
        index = next(counter)
        await agents.EnrollServer(
            agent_service_pb2.EnrollServerRequest(
                enrollment_token=created.token,
                agent_public_key=_key_line(),
                host_public_keys=[_key_line()],
                facts=agent_pb2.ServerFacts(
                    hostname=f"enrolled{index:06d}",
                    os=LINUX,
                    addresses=[f"172.16.{index >> 8 & 255}.{index & 255}"],
                    ssh_port=22,
                    agent_version="0.1.0",
                ),
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    empty = await closed_loop(
        _empty(channel), ENROLL_CONCURRENCY, scale.loop_seconds, scale.warmup_seconds
    )
    enrolled = await closed_loop(
        enroll, ENROLL_CONCURRENCY, scale.enroll_seconds, scale.warmup_seconds
    )
    return [
        Result(
            CASE,
            f"EnrollServer calls/s @{ENROLL_CONCURRENCY}",
            "calls/s",
            enrolled.rate,
            empty.rate,
            "empty RPC (health Check), same channel, anonymous",
            "higher",
            None,
            _notes(
                enrolled,
                empty,
                p99_ms=round(enrolled.p99_ms, 2),
                seconds=round(enrolled.seconds, 1),
                target="none: the issue asks for the rate, not a ratio",
            ),
        )
    ]


# --- the fleet: simulated agents in load processes --------------------------------------

WATCH_METHOD = "/sft.inventory.v1.AgentService/WatchAccounts"
HEARTBEAT_METHOD = "/sft.inventory.v1.AgentService/Heartbeat"


def _revision_of(data: bytes) -> tuple[int, int]:
    """Return (revision, size) of a serialized WatchAccountsResponse, the list unparsed.

    Field 1 (revision, a varint) is serialized first; a message shaped otherwise is
    parsed in full. Parsing 10,000 accounts per message in every simulated agent would
    make the load, not the platform, the bottleneck.
    """
    if data[:1] == b"\x08":
        revision, shift = 0, 0
        for byte in data[1:11]:
            revision |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return revision, len(data)
    return agent_service_pb2.WatchAccountsResponse.FromString(data).revision, len(data)


@dataclass(frozen=True)
class FleetPlan:
    """What one load process simulates and how long it may live."""

    address: str
    ca_pem: bytes
    agents: tuple[Agent, ...]
    heartbeat_seconds: float
    lifetime_seconds: float


@dataclass
class _Stream:
    """One simulated agent's account stream and what it has seen."""

    agent: Agent
    metadata: tuple[tuple[str, str], ...]
    first_at: float | None = None
    revision: int = 0
    crossed_at: float | None = None
    error: str | None = None


@dataclass
class FleetReport:
    """What the load processes have seen so far (times are time.monotonic(), system-wide)."""

    agents: int = 0
    started: float = float("inf")
    connected: int = 0
    first_min: float = float("inf")
    first_max: float = 0.0
    crossed: int = 0
    crossed_min: float = float("inf")
    crossed_max: float = 0.0
    failed: int = 0
    failed_uncrossed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    bytes: int = 0
    heartbeat_ms: list[float] = field(default_factory=list)
    heartbeat_errors: Counter[str] = field(default_factory=Counter)
    cpu_seconds: float = 0.0

    def add(self, other: FleetReport) -> FleetReport:
        """Return the combination of two load processes' reports."""
        return FleetReport(
            self.agents + other.agents,
            min(self.started, other.started),
            self.connected + other.connected,
            min(self.first_min, other.first_min),
            max(self.first_max, other.first_max),
            self.crossed + other.crossed,
            min(self.crossed_min, other.crossed_min),
            max(self.crossed_max, other.crossed_max),
            self.failed + other.failed,
            self.failed_uncrossed + other.failed_uncrossed,
            self.errors + other.errors,
            self.messages + other.messages,
            self.bytes + other.bytes,
            self.heartbeat_ms + other.heartbeat_ms,
            self.heartbeat_errors + other.heartbeat_errors,
            self.cpu_seconds + other.cpu_seconds,
        )

    def problems(self) -> str:
        """Return the most common stream and heartbeat errors, for a failure message."""
        shown = [f"{count}x {error}" for error, count in self.errors.most_common(3)]
        shown += [f"heartbeat {count}x {e}" for e, count in self.heartbeat_errors.most_common(2)]
        return "; ".join(shown) or "no errors reported"


class FleetLoad:
    """Many agents on few connections: one WatchAccounts stream and a heartbeat each."""

    def __init__(self, plan: FleetPlan) -> None:
        self._plan = plan
        self._streams = [
            _Stream(agent, (("authorization", f"Bearer {agent.token}"),)) for agent in plan.agents
        ]
        self._channels: list[grpc.aio.Channel] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_ms: list[float] = []
        self._heartbeat_errors: Counter[str] = Counter()
        self._messages = 0
        self._bytes = 0
        self._started = float("inf")
        self.threshold: int | None = None

    def start(self) -> None:
        """Open the connections and start every agent's stream."""
        self._started = time.monotonic()
        credentials = grpc.ssl_channel_credentials(self._plan.ca_pem)
        slots = asyncio.Semaphore(CONNECTING_PER_PROCESS)
        for start in range(0, len(self._streams), STREAMS_PER_CHANNEL):
            # A local subchannel pool: each channel its own connection (channels with
            # equal arguments would otherwise share one).
            channel = grpc.aio.secure_channel(
                self._plan.address,
                credentials,
                options=[
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ],
            )
            self._channels.append(channel)
            watch = channel.unary_stream(
                WATCH_METHOD,
                request_serializer=agent_service_pb2.WatchAccountsRequest.SerializeToString,
                response_deserializer=_revision_of,
            )
            beat = channel.unary_unary(
                HEARTBEAT_METHOD,
                request_serializer=agent_service_pb2.HeartbeatRequest.SerializeToString,
                response_deserializer=agent_service_pb2.HeartbeatResponse.FromString,
            )
            for stream in self._streams[start : start + STREAMS_PER_CHANNEL]:
                self._own(self._watch(stream, watch, beat, slots))

    def _own(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(
        self, stream: _Stream, watch: Any, beat: Any, slots: asyncio.Semaphore
    ) -> None:
        """Hold one agent's stream; note its first message and the first past the threshold."""
        await slots.acquire()
        holding = True
        try:
            call = watch(agent_service_pb2.WatchAccountsRequest(), metadata=stream.metadata)
            async for revision, size in call:
                now = time.monotonic()
                self._messages += 1
                self._bytes += size
                if stream.first_at is None:
                    stream.first_at = now
                    slots.release()
                    holding = False
                    self._own(self._beat(stream, beat))
                stream.revision = revision
                if (
                    self.threshold is not None
                    and revision > self.threshold
                    and stream.crossed_at is None
                ):
                    stream.crossed_at = now
            stream.error = "the stream ended (OK) while the platform was up"
        except grpc.aio.AioRpcError as error:
            stream.error = f"{error.code().name}: {(error.details() or '')[:160]}"
        finally:
            if holding:
                slots.release()

    async def _beat(self, stream: _Stream, beat: Any) -> None:
        """Heartbeat every interval (first at a random point in it), with the seeded facts."""
        agent, interval = stream.agent, self._plan.heartbeat_seconds
        facts = agent_pb2.ServerFacts(
            hostname=agent.hostname,
            canonical_name=agent.canonical_name,
            os=LINUX,
            addresses=[agent.address],
            ssh_port=22,
            agent_version="0.1.0",
        )
        await asyncio.sleep(random.uniform(0, interval))  # noqa: S311 (spread, not secrecy)
        while stream.error is None:
            began = time.perf_counter()
            request = agent_service_pb2.HeartbeatRequest(
                facts=facts,
                status=agent_pb2.AgentStatus(
                    health=agent_pb2.AGENT_HEALTH_OK,
                    applied_accounts_revision=stream.revision,
                ),
            )
            try:
                await beat(request, metadata=stream.metadata, timeout=CALL_TIMEOUT_SECONDS)
                self._heartbeat_ms.append((time.perf_counter() - began) * 1000)
            except grpc.aio.AioRpcError as error:
                self._heartbeat_errors[f"{error.code().name}: {(error.details() or '')[:120]}"] += 1
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - began)))

    def arm(self, revision: int) -> None:
        """Start watching for the first message past `revision` on every stream."""
        self.threshold = revision
        for stream in self._streams:
            stream.crossed_at = None

    def report(self) -> FleetReport:
        """Return what this process's streams have seen; heartbeats since the last report."""
        firsts = [s.first_at for s in self._streams if s.first_at is not None]
        crossed = [s.crossed_at for s in self._streams if s.crossed_at is not None]
        failed = [s for s in self._streams if s.error is not None]
        beats, self._heartbeat_ms = self._heartbeat_ms, []
        errors, self._heartbeat_errors = self._heartbeat_errors, Counter()
        return FleetReport(
            agents=len(self._streams),
            started=self._started,
            connected=len(firsts),
            first_min=min(firsts, default=float("inf")),
            first_max=max(firsts, default=0.0),
            crossed=len(crossed),
            crossed_min=min(crossed, default=float("inf")),
            crossed_max=max(crossed, default=0.0),
            failed=len(failed),
            failed_uncrossed=sum(1 for s in failed if s.crossed_at is None),
            errors=Counter(str(s.error) for s in failed),
            messages=self._messages,
            bytes=self._bytes,
            heartbeat_ms=beats,
            heartbeat_errors=errors,
            cpu_seconds=_sample(os.getpid()).cpu_seconds,
        )

    async def close(self) -> None:
        """Cancel every stream and heartbeat and close the connections."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close(grace=None)


def _fleet_child(plan: FleetPlan, control: Connection) -> None:
    """Run one load process: simulate `plan`'s agents and answer the benchmark's commands."""
    _raise_open_files()
    _exit_with_parent()
    asyncio.run(_simulate(plan, control))


async def _simulate(plan: FleetPlan, control: Connection) -> None:
    """Answer `report`, `arm REVISION` and `stop` until stopped or out of lifetime."""
    load = FleetLoad(plan)
    load.start()
    deadline = time.monotonic() + plan.lifetime_seconds
    try:
        while time.monotonic() < deadline:
            if not await asyncio.to_thread(control.poll, 0.2):
                continue
            command, value = control.recv()
            if command == "stop":
                break
            if command == "arm":
                load.arm(int(value))
            control.send(load.report())
    finally:
        await load.close()


class Fleet:
    """The load processes, asked together; always stopped on exit."""

    def __init__(self, plans: Sequence[FleetPlan]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._processes: list[tuple[BaseProcess, Connection]] = []
        for number, plan in enumerate(plans):
            ours, theirs = ctx.Pipe()
            process = ctx.Process(
                target=_fleet_child,
                args=(plan, theirs),
                name=f"sft-bench-fleet-{number}",
                daemon=True,
            )
            self._processes.append((process, ours))

    def start(self) -> None:
        """Start every load process."""
        for process, _ in self._processes:
            process.start()

    async def ask(self, command: str, value: int = 0) -> FleetReport:
        """Send `command` to every load process; return their combined report."""
        for _, control in self._processes:
            control.send((command, value))
        combined = FleetReport()
        for process, control in self._processes:
            if not await asyncio.to_thread(control.poll, CALL_TIMEOUT_SECONDS):
                alive = "is stuck" if process.is_alive() else f"exited ({process.exitcode})"
                raise RuntimeError(f"load process {process.name} {alive}; see its output above")
            combined = combined.add(control.recv())
        return combined

    async def stop(self) -> None:
        """Ask every load process to stop; kill those that do not in time."""
        for process, control in self._processes:
            if process.is_alive():
                try:
                    control.send(("stop", 0))
                except OSError:
                    pass
        for process, _ in self._processes:
            await asyncio.to_thread(_stop, process)


def _percentiles(values: Sequence[float]) -> tuple[float, float]:
    """Return (p50, p99) of `values`, or zeros when there are none."""
    if not values:
        return 0.0, 0.0
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _wait_for(
    fleet: Fleet,
    done: Callable[[FleetReport], bool],
    failed: Callable[[FleetReport], str | None],
    limit_seconds: float,
    what: Callable[[FleetReport], str],
) -> tuple[FleetReport, list[float]]:
    """Poll the fleet until `done`; raise on a failure or after `limit_seconds`.

    Returns the last report and the heartbeat latencies seen while waiting.
    """
    deadline = time.monotonic() + limit_seconds
    beats: list[float] = []
    while True:
        report = await fleet.ask("report")
        beats += report.heartbeat_ms
        if done(report):
            return report, beats
        problem = failed(report)
        if problem is not None:
            raise RuntimeError(f"{problem}: {report.problems()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what(report)} within {limit_seconds:g} s; {report.problems()}")
        await asyncio.sleep(0.25)


async def _fleet(
    callers: Callers,
    database: Database,
    listening: Listening,
    seeded: Seeded,
    tokens: dict[str, str],
    scale: Scale,
) -> list[Result]:
    """Hold N agent streams; measure the platform's memory and CPU, then a grant change."""
    n = scale.agents
    pid = listening.pid
    idle_before = _sample(pid)
    await asyncio.sleep(scale.idle_seconds)
    idle = _sample(pid)
    agents = seeded.agents[:n]
    share = -(-n // LOAD_PROCESSES)
    lifetime = scale.connect_limit_seconds + scale.steady_seconds
    lifetime += scale.propagation_limit_seconds + 120
    fleet = Fleet(
        [
            FleetPlan(
                callers.address,
                callers.ca_pem,
                agents[start : start + share],
                scale.heartbeat_seconds,
                lifetime,
            )
            for start in range(0, n, share)
        ]
    )
    fleet.start()
    try:
        connected, _ = await _wait_for(
            fleet,
            lambda r: r.connected == n,
            lambda r: f"{r.failed} of {n} account streams failed" if r.failed else None,
            scale.connect_limit_seconds,
            lambda r: f"only {r.connected} of {n} account streams got their first message",
        )
        _progress(f"{n} agents streaming after {connected.first_max - connected.started:.1f} s")
        before, busy_before = _sample(pid), _machine_busy()
        load_before = (await fleet.ask("report")).cpu_seconds
        await asyncio.sleep(scale.steady_seconds)
        steady = await fleet.ask("report")
        after, busy_after = _sample(pid), _machine_busy()
        if steady.failed:
            raise RuntimeError(
                f"{steady.failed} of {n} account streams failed while steady: {steady.problems()}"
            )
        async with database.sessions() as session:
            revision = int(
                await session.scalar(
                    select(Team.accounts_revision).where(Team.id == seeded.team_id)
                )
                or 0
            )
        await fleet.ask("arm", revision)
        groups = group_service_pb2_grpc.GroupServiceStub(callers.channel(tokens[ADMIN]))
        changed_at = time.monotonic()
        await groups.AddGroupMember(
            group_service_pb2.AddGroupMemberRequest(
                group=f"teams/{TEAM}/groups/{GROUP}", user=f"teams/{TEAM}/users/{NEWCOMER}"
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        rpc_seconds = time.monotonic() - changed_at
        reached, _ = await _wait_for(
            fleet,
            lambda r: r.crossed == n,
            lambda r: (
                f"{r.failed_uncrossed} of {n} account streams failed before the grant change "
                "reached them"
                if r.failed_uncrossed
                else None
            ),
            scale.propagation_limit_seconds,
            lambda r: (
                f"the grant change (revision > {revision}) reached only {r.crossed} of {n} "
                "account streams"
            ),
        )
        peak = _sample(pid)
        # Whether the memory a change took is given back once every stream has it.
        await asyncio.sleep(scale.settle_seconds)
        settled = _sample(pid)
    finally:
        await fleet.stop()
    beat_p50, beat_p99 = _percentiles(steady.heartbeat_ms)
    if steady.heartbeat_errors:
        _progress(
            f"{sum(steady.heartbeat_errors.values())} heartbeats failed in the steady window "
            f"({len(steady.heartbeat_ms)} succeeded): {steady.problems()}"
        )
    busy = 100 * (busy_after[0] - busy_before[0]) / max(1.0, busy_after[1] - busy_before[1])
    mib = 1024 * 1024
    common: dict[str, float | str] = {
        "agents": n,
        "issue_asks_agents": ISSUE_AGENTS,
        "load_processes": LOAD_PROCESSES,
        "streams_per_connection": STREAMS_PER_CHANNEL,
    }
    return [
        Result(
            CASE,
            f"fleet connect: every first message, {n} agents",
            "s",
            connected.first_max - connected.started,
            connected.first_min - connected.started,
            "the first agent's first message",
            "lower",
            None,
            {
                **common,
                "connecting_at_once": CONNECTING_PER_PROCESS * LOAD_PROCESSES,
                "received_mib": round(connected.bytes / mib, 1),
            },
        ),
        Result(
            CASE,
            f"platform RSS, {n} agents streaming",
            "MiB",
            after.rss_bytes / mib,
            idle.rss_bytes / mib,
            "platform RSS before the fleet (idle, after the other phases)",
            "lower",
            None,
            {
                **common,
                "per_agent_kib": round((after.rss_bytes - idle.rss_bytes) / 1024 / n, 1),
                "peak_rss_mib_whole_run": round(peak.peak_rss_bytes / mib, 1),
                "rss_mib_when_all_streams_had_the_change": round(peak.rss_bytes / mib, 1),
                f"rss_mib_{scale.settle_seconds:g}s_later": round(settled.rss_bytes / mib, 1),
            },
        ),
        Result(
            CASE,
            f"platform CPU, steady {scale.steady_seconds:g} s, {n} agents",
            "% of a core",
            _cpu_percent(before, after),
            _cpu_percent(idle_before, idle),
            f"platform CPU idle ({scale.idle_seconds:g} s before the fleet)",
            "lower",
            None,
            {
                **common,
                "heartbeat_seconds": scale.heartbeat_seconds,
                "heartbeats": len(steady.heartbeat_ms),
                "heartbeats_per_second": round(len(steady.heartbeat_ms) / scale.steady_seconds, 1),
                "heartbeat_p50_ms": round(beat_p50, 2),
                "heartbeat_p99_ms": round(beat_p99, 2),
                "heartbeats_due_per_second": round(n / scale.heartbeat_seconds, 1),
                "heartbeat_errors": sum(steady.heartbeat_errors.values()),
                "heartbeat_error_example": next(iter(steady.heartbeat_errors), ""),
                "load_cpu_percent": round(
                    100 * (steady.cpu_seconds - load_before) / scale.steady_seconds, 1
                ),
                "machine_busy_percent": round(busy, 1),
                "cpus": len(os.sched_getaffinity(0)),
            },
        ),
        Result(
            CASE,
            f"grant change reaches all {n} streams",
            "s",
            reached.crossed_max - changed_at,
            reached.crossed_min - changed_at,
            "the grant change reaching the first stream",
            "lower",
            None,
            {
                **common,
                "add_group_member_ms": round(rpc_seconds * 1000, 1),
                "revision_before": revision,
                "received_mib_total": round(reached.bytes / mib, 1),
            },
            absolute_target=PROPAGATION_SECONDS,
        ),
    ]


# --- the case ---------------------------------------------------------------------------


_BEGAN = [time.monotonic()]


def _progress(message: str) -> None:
    print(
        f"- {CASE} [{time.monotonic() - _BEGAN[0]:5.1f} s]: {message}", file=sys.stderr, flush=True
    )


async def run(scale: Scale) -> list[Result]:
    """Seed a platform at `scale` and measure every phase; return the results."""
    if AGENTS_OVERRIDE in os.environ:
        scale = dataclasses.replace(scale, agents=int(os.environ[AGENTS_OVERRIDE]))
    _BEGAN[0] = time.monotonic()
    results: list[Result] = []
    logged: Counter[tuple[str, str]] = Counter()
    first_error = ""
    try:
        with (
            tempfile.TemporaryDirectory(prefix="sft-bench-inventory-") as name,
            postgres_server() as postgres,
        ):
            directory = Path(name)
            async with _platform(postgres.url(), directory) as listening:
                _progress("platform listening")
                database = Database.connect(postgres.url())
                callers = Callers(listening, (directory / "tls" / "ca.pem").read_bytes())
                try:
                    seeded = await _seed(
                        database, listening, directory / "tls", scale, scale.agents + 1
                    )
                    _progress(f"seeded {seeded.rows:,} rows in {seeded.seconds:.1f} s")
                    tokens = {
                        user: await _person_token(database, callers, user)
                        for user in (ADMIN, MEMBER)
                    }
                    results += await _list_servers(callers, tokens, scale)
                    results += await _resolve(callers, tokens, seeded.canonical_names, scale)
                    _progress("ListServers and ResolveServer measured")
                    results += await _snapshots(callers, database, seeded, scale)
                    results += await _enrollments(callers, tokens, scale)
                    _progress(f"starting {scale.agents} simulated agents")
                    results += await _fleet(callers, database, listening, seeded, tokens, scale)
                finally:
                    await callers.close()
                    await database.close()
            logged, first_error = _log_summary(directory / PLATFORM_LOG)
    except BaseException:
        if results:
            print(
                f"{CASE} failed; the rows measured before:\n{print_table(results)}", file=sys.stderr
            )
        raise
    if logged:
        _progress(
            "the platform logged: "
            + "; ".join(f"{n}x {level} {event!r}" for (level, event), n in logged.most_common(6))
        )
    if first_error:
        _progress(f"the platform's first error: {first_error}")
    levels = Counter(level for level, _ in logged.elements())
    return [
        dataclasses.replace(
            result,
            notes={
                **result.notes,
                "platform_log_errors_whole_run": levels["error"] + levels["critical"],
                "platform_log_warnings_whole_run": levels["warning"],
            },
        )
        if index == len(results) - 1
        else result
        for index, result in enumerate(results)
    ]


@case(
    CASE, "ListServers, ResolveServer, WatchAccounts, enrollment and an agent fleet at 100k servers"
)
async def inventory_scale(quick: bool) -> list[Result]:
    """Measure the inventory at scale on a throwaway PostgreSQL (skipped without one)."""
    if find_program("initdb", "/usr/lib/postgresql/*/bin/initdb") is None:
        _progress("PostgreSQL is not installed (no initdb); the case is skipped")
        return []
    return await run(QUICK if quick else FULL)
