"""sft:// certificate URIs and resource names: round trips, one spelling per value, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.cert_uris import (
    SftUri,
    account_uri,
    parse_sft_uri,
    server_uri,
    split_project_name,
    split_server_name,
    split_user_name,
    user_uri,
)
from runtime.errors import InvalidInput

TEAMS = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
USERS = st.from_regex(r"[a-z0-9_][a-z0-9_.-]{0,63}", fullmatch=True)
SERVER_IDS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
SEGMENTS = st.text(min_size=1, max_size=30)


def test_builders_write_the_documented_format() -> None:
    assert user_uri("acme", "web", "alice") == "sft://acme/web/users/alice"
    assert account_uri("acme", "web", "J.Smith") == "sft://acme/web/accounts/J.Smith"
    assert server_uri("acme", "web", "7f3c_9A-1") == "sft://acme/web/servers/7f3c_9A-1"


def test_segments_are_percent_encoded() -> None:
    assert user_uri("acme", "web", "a/b c") == "sft://acme/web/users/a%2Fb%20c"
    assert parse_sft_uri("sft://acme/web/users/a%2Fb%20c").name == "a/b c"


def test_parse_returns_what_the_uri_names() -> None:
    assert parse_sft_uri("sft://acme/web/servers/7f3c") == SftUri("acme", "web", "servers", "7f3c")


@given(SEGMENTS, SEGMENTS, SEGMENTS)
def test_any_segments_round_trip(team: str, project: str, name: str) -> None:
    assert parse_sft_uri(user_uri(team, project, name)) == SftUri(team, project, "users", name)
    assert parse_sft_uri(account_uri(team, project, name)) == SftUri(
        team, project, "accounts", name
    )
    assert parse_sft_uri(server_uri(team, project, name)) == SftUri(team, project, "servers", name)


@given(SEGMENTS, SEGMENTS, SEGMENTS)
def test_built_uris_are_ascii_without_query_or_fragment(team: str, project: str, name: str) -> None:
    uri = user_uri(team, project, name)
    assert uri.isascii()
    assert "?" not in uri and "#" not in uri
    assert uri.count("/") == 5


@given(st.text(max_size=120))
def test_parse_raises_only_invalid_input(text: str) -> None:
    try:
        parse_sft_uri(text)
    except InvalidInput:
        pass


@given(st.lists(st.text(alphabet="abz%2F0AE9/:?#@. ", max_size=12), min_size=1, max_size=6))
def test_every_accepted_uri_is_the_one_spelling_of_its_value(segments: list[str]) -> None:
    uri = "sft://" + "/".join(segments)
    try:
        parsed = parse_sft_uri(uri)
    except InvalidInput:
        return
    builders = {"users": user_uri, "accounts": account_uri, "servers": server_uri}
    assert builders[parsed.kind](parsed.team, parsed.project, parsed.name) == uri


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "must start with 'sft://'"),
        ("https://acme/web/users/alice", "must start with 'sft://'"),
        ("SFT://acme/web/users/alice", "must start with 'sft://'"),
        ("sft:/acme/web/users/alice", "must start with 'sft://'"),
        ("sft://acme/web/users", "has 3 segments, not 4"),
        ("sft://acme/web/users/alice/x", "has 5 segments, not 4"),
        ("sft://acme/web/users/alice/", "has 5 segments, not 4"),
        ("sft://acme//users/alice", "empty segment"),
        ("sft:///web/users/alice", "empty segment"),
        ("sft://acme/web/users/", "empty segment"),
        ("sft://acme/web/groups/admins", "names a 'groups'"),
        ("sft://acme/web/Users/alice", "names a 'Users'"),
        ("sft://acme/web/users/alice?x=1", "query or fragment"),
        ("sft://acme/web/users/alice#frag", "query or fragment"),
        ("sft://acme/web/users/al%69ce", "not canonically percent-encoded"),
        ("sft://acme/web/users/a%2fb", "not canonically percent-encoded"),
        ("sft://acme/web/users/a%ZZ", "not canonically percent-encoded"),
        ("sft://acme/web/users/%FF", "not canonically percent-encoded"),
        ("sft://acme/web/users/a b", "not canonically percent-encoded"),
        ("sft://acme/web/%75sers/alice", "not canonically percent-encoded"),
        ("sft://ac@me/web/users/alice", "not canonically percent-encoded"),
        ("sft://acme:443/web/users/alice", "not canonically percent-encoded"),
        ("sft://acme/web/users/alicé", "must be ASCII"),
        ("sft://acme/web/users/" + "a" * 2100, "at most 2048 characters"),
    ],
    ids=[
        "empty",
        "https",
        "upper-scheme",
        "one-slash",
        "too-few",
        "too-many",
        "trailing-slash",
        "empty-project",
        "empty-team",
        "empty-name",
        "unknown-kind",
        "kind-case",
        "query",
        "fragment",
        "needless-escape",
        "lowercase-escape",
        "bad-escape",
        "invalid-utf8",
        "raw-space",
        "escaped-kind",
        "userinfo",
        "port",
        "non-ascii",
        "oversized",
    ],
)
def test_malformed_uris_are_refused(uri: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_sft_uri(uri)


@pytest.mark.parametrize("field", ["team", "project", "name"])
def test_builders_refuse_empty_segments(field: str) -> None:
    values = {"team": "acme", "project": "web", "name": "alice"}
    values[field] = ""
    with pytest.raises(InvalidInput, match="cannot name an empty"):
        user_uri(values["team"], values["project"], values["name"])


# --- resource names ------------------------------------------------------------------


@given(TEAMS, TEAMS)
def test_project_names_split(team: str, project: str) -> None:
    assert split_project_name(f"teams/{team}/projects/{project}") == (team, project)


@given(TEAMS, USERS)
def test_user_names_split(team: str, user: str) -> None:
    assert split_user_name(f"teams/{team}/users/{user}") == (team, user)


@given(TEAMS, TEAMS, SERVER_IDS)
def test_server_names_split(team: str, project: str, server: str) -> None:
    name = f"teams/{team}/projects/{project}/servers/{server}"
    assert split_server_name(name) == (team, project, server)


@given(st.text(max_size=80))
def test_name_splitters_raise_only_invalid_input(text: str) -> None:
    for split in (split_project_name, split_user_name, split_server_name):
        try:
            split(text)
        except InvalidInput:
            pass


@pytest.mark.parametrize(
    "name",
    [
        "",
        "teams/acme/projects",
        "teams/acme/projects/web/",
        "/teams/acme/projects/web",
        "team/acme/projects/web",
        "teams/acme/project/web",
        "teams/Acme/projects/web",
        "teams/acme/projects/-web",
        "teams/acme/projects/web_1",
        "teams/acme/projects/web\n",
        "teams//projects/web",
        "teams/acme/projects/" + "w" * 64,
        "teams/acme/users/alice",
    ],
    ids=[
        "empty",
        "missing-project",
        "trailing-slash",
        "leading-slash",
        "team-typo",
        "projects-typo",
        "uppercase",
        "leading-dash",
        "underscore",
        "newline",
        "empty-team",
        "too-long",
        "user-name",
    ],
)
def test_bad_project_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match=r"use teams/\{team\}/projects/\{project\}"):
        split_project_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "teams/acme/users",
        "teams/acme/users/Alice",
        "teams/acme/users/.alice",
        "teams/acme/users/-alice",
        "teams/acme/users/al ice",
        "teams/acme/users/" + "a" * 65,
        "teams/acme/projects/web",
        "teams/acme/users/alice/x",
    ],
    ids=[
        "missing-user",
        "uppercase",
        "leading-dot",
        "leading-dash",
        "space",
        "too-long",
        "project-name",
        "extra-segment",
    ],
)
def test_bad_user_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match=r"use teams/\{team\}/users/\{user\}"):
        split_user_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "teams/acme/projects/web",
        "teams/acme/projects/web/servers",
        "teams/acme/projects/web/servers/",
        "teams/acme/projects/web/hosts/7f3c",
        "teams/acme/projects/web/servers/7f.3c",
        "teams/acme/projects/web/servers/" + "a" * 65,
        "teams/acme/projects/Web/servers/7f3c",
    ],
    ids=[
        "project-name",
        "missing-id",
        "empty-id",
        "hosts",
        "dot-in-id",
        "too-long",
        "uppercase-project",
    ],
)
def test_bad_server_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match=r"/servers/\{server\}"):
        split_server_name(name)


def test_longest_valid_names_are_accepted() -> None:
    team, project = "t" * 63, "p" * 63
    assert split_project_name(f"teams/{team}/projects/{project}") == (team, project)
    assert split_user_name(f"teams/{team}/users/{'u' * 64}") == (team, "u" * 64)
    assert split_server_name(f"teams/{team}/projects/{project}/servers/{'S' * 64}")[2] == "S" * 64
