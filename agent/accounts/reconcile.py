"""Brings local accounts to what the platform wants: plan the difference, then apply it.

Planning is pure (desired state + a cheap read of the OS + sftd's record -> ordered
actions); applying goes through an `AccountBackend`, one action at a time, each
logged with the platform user it is for and why. It never touches an account sftd
did not create, and never deletes one (a user no longer granted is locked, home kept).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace

import structlog

from agent.accounts.backend import (
    AccountBackend,
    AccountChange,
    BackendError,
    LocalAccount,
    LocalSystem,
    NewAccount,
)
from agent.accounts.managed import ManagedAccount, ManagedAccounts
from agent.accounts.model import DesiredAccount, DesiredState

__all__ = [
    "AccountConflict",
    "ActionFailure",
    "ChangeAccount",
    "ConflictKind",
    "CreateAccount",
    "CreateGroup",
    "Plan",
    "PrepareAdminRights",
    "ReconcileOutcome",
    "Reconciler",
    "plan_changes",
]

log = structlog.get_logger("sft.agent.accounts")

ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: Below this, uids and gids belong to the OS (Debian/RHEL SYS_UID_MAX is 999).
FIRST_USER_ID = 1000
#: The largest id useradd accepts ((uid_t)-1 means "no id" to the kernel).
LAST_ID = 2**32 - 2
#: nobody/nogroup: shared by unrelated daemons; never give it to a person.
NOBODY_ID = 65534
#: Names the OS or other software own. The platform refuses them too; we fail closed.
RESERVED_NAMES = frozenset(
    {
        "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news",
        "uucp", "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody",
        "nogroup", "_apt", "sshd", "messagebus", "halt", "shutdown", "operator", "adm",
        "admin", "sudo", "wheel", "shadow", "disk", "staff", "users", "docker", "lxd",
        "sft-admin", "sftd", "administrator", "administrators", "guest",
        "defaultaccount", "wdagutilityaccount", "remote desktop users", "krbtgt",
    }
)  # fmt: skip
#: The most of a full name that goes into the GECOS field.
_GECOS_LENGTH = 256
# ':' and newline end the field in /etc/passwd; ',' separates GECOS subfields.
_GECOS_UNSAFE = re.compile(r"[\x00-\x1f\x7f:,=]")
_ADMIN = "<admin rights>"  # stands for PrepareAdminRights among failed dependencies


class ConflictKind(enum.Enum):
    """Why an account was refused (the platform's AccountConflictKind)."""

    NAME_IN_USE = "name_in_use"
    #: Also for uids in the system range or nobody's: those belong to the OS.
    UID_IN_USE = "uid_in_use"
    #: Also for gids in the system range.
    GID_IN_USE = "gid_in_use"
    #: Invalid or reserved name (root, daemon, …), or too long for this OS.
    NAME_INVALID = "name_invalid"


@dataclass(frozen=True)
class AccountConflict:
    """A desired account sftd refused; the daemon reports it with ReportAccountConflict."""

    name: str
    user: str
    kind: ConflictKind
    detail: str


@dataclass(frozen=True)
class ActionFailure:
    """An action that failed or was skipped; the others went on."""

    name: str
    action: str
    error: str


@dataclass(frozen=True)
class PrepareAdminRights:
    """Make admin grants work before the first admin account needs them."""

    reason: str


@dataclass(frozen=True)
class CreateGroup:
    """Create a local group (gid None: the OS picks one)."""

    group: str
    gid: int | None
    #: The account that needs it first, and its platform user (for the log).
    name: str
    user: str


@dataclass(frozen=True)
class CreateAccount:
    """Create an account the platform grants and this server lacks."""

    desired: DesiredAccount
    account: NewAccount
    reason: str


@dataclass(frozen=True)
class ChangeAccount:
    """Change an account sftd created (an empty change only updates the record)."""

    name: str
    local_name: str
    user: str
    change: AccountChange
    #: What to record as the platform's grant after success (None: unchanged).
    granted: bool | None
    reason: str


Action = PrepareAdminRights | CreateGroup | CreateAccount | ChangeAccount


@dataclass(frozen=True)
class Plan:
    """Ordered actions (revocations first, then groups, creations, changes), and refusals."""

    actions: tuple[Action, ...]
    conflicts: tuple[AccountConflict, ...]
    failures: tuple[ActionFailure, ...]


@dataclass(frozen=True)
class ReconcileOutcome:
    """What one reconcile did."""

    revision: int
    applied: tuple[Action, ...]
    conflicts: tuple[AccountConflict, ...]
    failures: tuple[ActionFailure, ...]


ConflictSink = Callable[[AccountConflict], Awaitable[None]]


class Reconciler:
    """Applies each DesiredState to the local accounts (the daemon's `apply` target).

    `zero_standing_privilege` (Windows, or Linux with the broker): granted accounts
    are created locked and only the broker's enable unlocks them; otherwise (Linux
    default) granted accounts are unlocked, with no password: certificate logins only.
    `on_conflict` gets each refused account once (again when its reason changes).
    """

    def __init__(
        self,
        backend: AccountBackend,
        managed: ManagedAccounts,
        *,
        zero_standing_privilege: bool = False,
        on_conflict: ConflictSink | None = None,
    ) -> None:
        self.backend = backend
        self.managed = managed
        self.zero_standing_privilege = zero_standing_privilege
        self.on_conflict = on_conflict
        self.last_outcome: ReconcileOutcome | None = None
        self._reported: dict[str, AccountConflict] = {}

    async def apply(self, state: DesiredState) -> None:
        """Bring the local accounts to `state` (the daemon's entry point)."""
        await self.reconcile(state)

    async def reconcile(self, state: DesiredState) -> ReconcileOutcome:
        """Plan and apply `state`; return what was done, refused and failed."""
        async with self.managed.lock:
            system = await self.backend.read()
            record_changed = _resolve_pending(self.managed, system, self.backend.numeric_ids)
            plan = plan_changes(
                state,
                system,
                self.managed,
                self.backend,
                zero_standing_privilege=self.zero_standing_privilege,
            )
            creations = [a for a in plan.actions if isinstance(a, CreateAccount)]
            for creation in creations:
                self.managed.put(_record(creation, pending=True))
            if creations:
                # Before the OS calls: a crash in between leaves pending entries that the
                # next run resolves against the OS, not accounts sftd disowns.
                self.managed.save()
            applied, failures = await self._run(plan.actions, state.revision)
            if applied or record_changed:
                self.managed.save()
        outcome = ReconcileOutcome(
            revision=state.revision,
            applied=tuple(applied),
            conflicts=plan.conflicts,
            failures=plan.failures + tuple(failures),
        )
        self.last_outcome = outcome
        log.info(
            "accounts reconciled",
            revision=state.revision,
            desired=len(state.accounts),
            managed=len(self.managed.accounts),
            changes=len(outcome.applied),
            conflicts=len(outcome.conflicts),
            failures=len(outcome.failures),
        )
        await self._report(outcome.conflicts)
        return outcome

    async def _run(
        self, actions: Iterable[Action], revision: int
    ) -> tuple[list[Action], list[ActionFailure]]:
        applied: list[Action] = []
        failures: list[ActionFailure] = []
        failed_groups: set[str] = set()
        for action in actions:
            name, what = _label(action)
            blocked = sorted(_needs(action) & failed_groups)
            if blocked:
                failure = ActionFailure(name, what, f"skipped: could not create {blocked[0]}")
                failures.append(failure)
                log.warning(
                    "account change skipped",
                    account=name,
                    action=what,
                    reason=failure.error,
                    revision=revision,
                )
                continue
            try:
                await self._execute(action)
            except BackendError as error:
                failures.append(ActionFailure(name, what, str(error)))
                log.error(
                    "account change failed",
                    account=name,
                    action=what,
                    error=str(error),
                    revision=revision,
                )
                if isinstance(action, CreateGroup):
                    failed_groups.add(action.group)
                elif isinstance(action, PrepareAdminRights):
                    failed_groups.add(_ADMIN)
                continue
            applied.append(action)
            _log_applied(action, revision)
        return applied, failures

    async def _execute(self, action: Action) -> None:
        if isinstance(action, PrepareAdminRights):
            await self.backend.prepare_admin_rights()
        elif isinstance(action, CreateGroup):
            await self.backend.create_group(action.group, action.gid)
        elif isinstance(action, CreateAccount):
            await self.backend.create_account(action.account)
            self.managed.put(_record(action, pending=False))
        else:
            if not action.change.is_empty():
                await self.backend.change_account(action.local_name, action.change)
            if action.granted is not None:
                self.managed.set_granted(action.name, action.granted)

    async def _report(self, conflicts: Iterable[AccountConflict]) -> None:
        current = {c.name: c for c in conflicts}
        for name in set(self._reported) - set(current):
            del self._reported[name]
        for name, conflict in current.items():
            if self._reported.get(name) == conflict:
                continue
            log.warning(
                "account refused",
                account=name,
                user=conflict.user,
                kind=conflict.kind.value,
                detail=conflict.detail,
            )
            if self.on_conflict is not None:
                try:
                    await self.on_conflict(conflict)
                except Exception as error:  # reported again next time
                    log.warning("could not report account conflict", account=name, error=str(error))
                    continue
            self._reported[name] = conflict


def plan_changes(
    state: DesiredState,
    system: LocalSystem,
    managed: ManagedAccounts,
    backend: AccountBackend,
    *,
    zero_standing_privilege: bool = False,
) -> Plan:
    """Return the actions that bring `system` to `state`, touching only what differs."""
    planner = _Planner(system, managed, backend, zero_standing_privilege)
    for account in state.accounts:
        planner.desire(account, create_missing=state.create_missing)
    for record in managed.accounts.values():
        if record.name not in planner.desired and not record.pending:
            planner.revoke(record)
    return planner.plan()


@dataclass
class _Planner:
    system: LocalSystem
    managed: ManagedAccounts
    backend: AccountBackend
    zero_standing_privilege: bool
    desired: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    revocations: list[Action] = field(default_factory=list)
    groups: dict[str, CreateGroup] = field(default_factory=dict)
    creations: list[Action] = field(default_factory=list)
    changes: list[Action] = field(default_factory=list)
    conflicts: list[AccountConflict] = field(default_factory=list)
    failures: list[ActionFailure] = field(default_factory=list)
    admin_reason: str | None = None
    uids: dict[int, str] = field(default_factory=dict)
    gids: dict[int, str] = field(default_factory=dict)

    def plan(self) -> Plan:
        prepare: list[Action] = []
        if self.admin_reason is not None and not self.system.admin_rights_ready:
            prepare.append(PrepareAdminRights(self.admin_reason))
        # Primary groups (with the platform's gid) before supplementary ones.
        groups = sorted(self.groups.values(), key=lambda g: (g.gid is None, g.group))
        actions = (*self.revocations, *prepare, *groups, *self.creations, *self.changes)
        return Plan(tuple(actions), tuple(self.conflicts), tuple(self.failures))

    def refuse(self, account: DesiredAccount, kind: ConflictKind, detail: str) -> None:
        self.conflicts.append(AccountConflict(account.name, account.user, kind, detail))

    def desire(self, account: DesiredAccount, *, create_missing: bool) -> None:
        local_name = self.backend.local_name(account)
        if not self._valid(account, local_name):
            return
        record = self.managed.get(account.name)
        existing = self.system.account(local_name)
        if record is not None and existing is not None:
            if self.backend.numeric_ids and existing.uid != record.uid:
                self.refuse(
                    account,
                    ConflictKind.NAME_IN_USE,
                    f"local account {local_name!r} now has uid {existing.uid}, not "
                    f"{record.uid} as sftd created it; someone replaced it",
                )
                return
            self.desired.add(account.name)
            self._update(account, record, existing)
            return
        if existing is not None:
            self.refuse(
                account,
                ConflictKind.NAME_IN_USE,
                f"local account {local_name!r} exists and sftd did not create it; "
                "sftd never takes over an account",
            )
            return
        if not self._ids_free(account):
            return
        self.desired.add(account.name)
        if not create_missing:
            return
        groups = self._groups(account)
        if groups is None:
            return
        if self.backend.numeric_ids and not self.system.has_group(account.primary_group):
            self._need_group(account.primary_group, account.gid, account)
        for group in groups:
            self._need_group(group, None, account)
        if account.admin:
            self.admin_reason = f"admin granted to {account.user}"
        new = NewAccount(
            name=local_name,
            uid=account.uid,
            gid=account.gid,
            primary_group=account.primary_group,
            groups=groups,
            admin=account.admin,
            gecos=gecos(account.full_name),
            locked=self.zero_standing_privilege,
        )
        reason = "granted on this server's project"
        if record is not None:
            reason = "granted, and its account was removed from this server"
        self.creations.append(CreateAccount(account, new, reason))

    def _valid(self, account: DesiredAccount, local_name: str) -> bool:
        problem = name_problem(account.name) or self.backend.name_problem(local_name)
        if problem is not None:
            self.refuse(account, ConflictKind.NAME_INVALID, problem)
            return False
        if account.name in self.seen:
            self.refuse(account, ConflictKind.NAME_IN_USE, "the desired list names it twice")
            return False
        self.seen.add(account.name)
        if self.backend.numeric_ids:
            for kind, value, what in (
                (ConflictKind.UID_IN_USE, account.uid, "uid"),
                (ConflictKind.GID_IN_USE, account.gid, "gid"),
            ):
                problem = id_problem(value, what)
                if problem is not None:
                    self.refuse(account, kind, problem)
                    return False
            if account.primary_group != account.name:
                self.refuse(
                    account,
                    ConflictKind.NAME_INVALID,
                    f"primary group {account.primary_group!r} must be named like "
                    f"the account {account.name!r}",
                )
                return False
            other = self.uids.setdefault(account.uid, account.name)
            if other != account.name:
                self.refuse(
                    account,
                    ConflictKind.UID_IN_USE,
                    f"uid {account.uid} is also desired for {other!r}",
                )
                return False
            other = self.gids.setdefault(account.gid, account.name)
            if other != account.name:
                self.refuse(
                    account,
                    ConflictKind.GID_IN_USE,
                    f"gid {account.gid} is also desired for {other!r}",
                )
                return False
        return True

    def _ids_free(self, account: DesiredAccount) -> bool:
        if not self.backend.numeric_ids:
            return True
        owner = self.system.owner_of_uid(account.uid)
        if owner is not None:
            self.refuse(
                account,
                ConflictKind.UID_IN_USE,
                f"uid {account.uid} belongs to local user {owner!r}",
            )
            return False
        group = self.system.group_of_gid(account.gid)
        if group is not None and group != account.primary_group:
            self.refuse(
                account,
                ConflictKind.GID_IN_USE,
                f"gid {account.gid} belongs to local group {group!r}",
            )
            return False
        gid = self.system.gid_of(account.primary_group)
        if self.system.has_group(account.primary_group) and gid != account.gid:
            self.refuse(
                account,
                ConflictKind.GID_IN_USE,
                f"local group {account.primary_group!r} exists with gid {gid}, not {account.gid}",
            )
            return False
        return True

    def _groups(self, account: DesiredAccount) -> tuple[str, ...] | None:
        """Return the supplementary groups to set, or None (refused) if one is unsafe."""
        groups = tuple(sorted({g for g in account.supplementary_groups if g != account.name}))
        for group in groups:
            problem = name_problem(group)
            gid = self.system.gid_of(group)
            if problem is None and gid is not None and gid < FIRST_USER_ID:
                problem = f"group {group!r} is a system group (gid {gid})"
            if problem is not None:
                failure = ActionFailure(
                    account.name, "set groups", f"refused: {problem}; sftd only manages user groups"
                )
                self.failures.append(failure)
                return None
        return groups

    def _need_group(self, group: str, gid: int | None, account: DesiredAccount) -> None:
        if self.system.has_group(group):
            return
        current = self.groups.get(group)
        if current is None or (current.gid is None and gid is not None):
            self.groups[group] = CreateGroup(group, gid, account.name, account.user)

    def _update(self, account: DesiredAccount, record: ManagedAccount, local: LocalAccount) -> None:
        if self.backend.numeric_ids and (local.uid, local.gid) != (account.uid, account.gid):
            self.failures.append(
                ActionFailure(
                    account.name,
                    "renumber",
                    f"the platform now wants uid/gid {account.uid}/{account.gid} but the account "
                    f"has {local.uid}/{local.gid}; sftd does not renumber existing accounts",
                )
            )
        groups = self._groups(account)
        reasons = []
        set_groups = None
        admin = None
        if groups is not None and (
            frozenset(groups) != local.groups or account.admin != local.admin
        ):
            for group in groups:
                self._need_group(group, None, account)
            set_groups, admin = groups, account.admin
            if account.admin and not local.admin:
                reasons.append("admin granted")
                self.admin_reason = f"admin granted to {account.user}"
            elif local.admin and not account.admin:
                reasons.append("admin revoked")
            if frozenset(groups) != local.groups:
                reasons.append("groups changed")
        new_gecos = gecos(account.full_name)
        if new_gecos != local.gecos:
            reasons.append("full name changed")
        locked = None
        if not self.zero_standing_privilege and local.locked:
            locked = False
            reasons.append("granted again" if not record.granted else "was locked outside sftd")
        elif not record.granted:
            reasons.append("granted again")
        change = AccountChange(
            groups=set_groups,
            admin=admin,
            gecos=new_gecos if new_gecos != local.gecos else None,
            locked=locked,
        )
        granted = None if record.granted else True
        if change.is_empty() and granted is None:
            return
        self.changes.append(
            ChangeAccount(
                account.name, record.local_name, account.user, change, granted, ", ".join(reasons)
            )
        )

    def revoke(self, record: ManagedAccount) -> None:
        local = self.system.account(record.local_name)
        granted = False if record.granted else None
        if local is None or (self.backend.numeric_ids and local.uid != record.uid):
            # Gone, or someone else's now: only our record changes.
            if granted is not None:
                self.revocations.append(
                    ChangeAccount(
                        record.name,
                        record.local_name,
                        record.user,
                        AccountChange(),
                        granted,
                        "no longer granted",
                    )
                )
            return
        locked = True if not local.locked or local.has_password else None
        groups, admin = (tuple(sorted(local.groups)), False) if local.admin else (None, None)
        change = AccountChange(groups=groups, admin=admin, locked=locked)
        if change.is_empty() and granted is None:
            return
        self.revocations.append(
            ChangeAccount(
                record.name, record.local_name, record.user, change, granted, "no longer granted"
            )
        )


def name_problem(name: str) -> str | None:
    """Return why `name` cannot be an sftd account or group name, or None."""
    if not ACCOUNT_NAME.fullmatch(name):
        return f"{name!r} is not a valid name ([a-z_][a-z0-9_-], at most 32 characters)"
    if name in RESERVED_NAMES or name.startswith("systemd-"):
        return f"{name!r} is reserved for the operating system or sftd itself"
    return None


def id_problem(value: int, what: str) -> str | None:
    """Return why `value` cannot be an sftd uid/gid (`what` names it), or None."""
    if value == NOBODY_ID:
        return f"{what} {value} is nobody's, shared by system daemons"
    if not FIRST_USER_ID <= value <= LAST_ID:
        return f"{what} {value} is outside {FIRST_USER_ID}..{LAST_ID} (system or invalid)"
    return None


def gecos(full_name: str) -> str:
    """Return `full_name` made safe for the GECOS field (no ':', ',', '=' or controls)."""
    return " ".join(_GECOS_UNSAFE.sub(" ", full_name).split())[:_GECOS_LENGTH]


def _resolve_pending(managed: ManagedAccounts, system: LocalSystem, numeric_ids: bool) -> bool:
    """Settle creations a crash left pending: adopt them if the OS has them, else forget."""
    changed = False
    for record in list(managed.accounts.values()):
        if not record.pending:
            continue
        local = system.account(record.local_name)
        changed = True
        if local is not None and (not numeric_ids or local.uid == record.uid):
            managed.put(replace(record, pending=False))
            log.info("pending account adopted", account=record.name, user=record.user)
        else:
            managed.forget(record.name)
    return changed


def _record(creation: CreateAccount, *, pending: bool) -> ManagedAccount:
    desired = creation.desired
    return ManagedAccount(
        name=desired.name,
        local_name=creation.account.name,
        user=desired.user,
        uid=desired.uid,
        gid=desired.gid,
        granted=True,
        pending=pending,
    )


def _needs(action: Action) -> set[str]:
    if isinstance(action, CreateAccount):
        needs = {action.account.primary_group, *action.account.groups}
        return needs | {_ADMIN} if action.account.admin else needs
    if isinstance(action, ChangeAccount) and action.change.groups is not None:
        needs = set(action.change.groups)
        return needs | {_ADMIN} if action.change.admin else needs
    return set()


def _label(action: Action) -> tuple[str, str]:
    if isinstance(action, PrepareAdminRights):
        return "", "prepare admin rights"
    if isinstance(action, CreateGroup):
        return action.name, f"create group {action.group}"
    if isinstance(action, CreateAccount):
        return action.desired.name, "create account"
    return action.name, f"change account: {action.change.describe()}"


def _log_applied(action: Action, revision: int) -> None:
    if isinstance(action, PrepareAdminRights):
        log.info("admin rights prepared", reason=action.reason, revision=revision)
    elif isinstance(action, CreateGroup):
        log.info(
            "group created",
            group=action.group,
            gid=action.gid,
            account=action.name,
            user=action.user,
            reason="needed by a granted account",
            revision=revision,
        )
    elif isinstance(action, CreateAccount):
        new = action.account
        log.info(
            "account created",
            account=action.desired.name,
            local_name=new.name,
            user=action.desired.user,
            uid=new.uid,
            gid=new.gid,
            groups=list(new.groups),
            admin=new.admin,
            locked=new.locked,
            reason=action.reason,
            revision=revision,
        )
    else:
        log.info(
            "account changed",
            account=action.name,
            local_name=action.local_name,
            user=action.user,
            change=action.change.describe(),
            reason=action.reason,
            revision=revision,
        )
