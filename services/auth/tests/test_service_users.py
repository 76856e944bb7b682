"""Service-user names and API key secrets without a database."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from runtime.errors import InvalidInput
from services.auth.service_users import (
    KEY_SECRET_PREFIX,
    check_key_id,
    check_service_user_id,
    hash_key_secret,
    new_key_secret,
    secret_matches,
    split_key_name,
    split_service_user_name,
)


def test_a_secret_is_long_random_prefixed_and_stored_as_its_sha256() -> None:
    secrets = {new_key_secret() for _ in range(50)}
    assert len(secrets) == 50
    secret = secrets.pop()
    assert secret.startswith(KEY_SECRET_PREFIX)
    assert len(secret) <= 128
    assert len(secret) - len(KEY_SECRET_PREFIX) >= 43  # 32 bytes in base64url
    assert hash_key_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()


def test_only_the_right_secret_matches() -> None:
    secret = new_key_secret()
    stored = hash_key_secret(secret)
    assert secret_matches(secret, stored)
    assert not secret_matches(new_key_secret(), stored)
    assert not secret_matches(secret, None)  # unknown key
    assert not secret_matches("", stored)
    assert not secret_matches(secret + "x" * 200, hash_key_secret(secret + "x" * 200))


@pytest.mark.parametrize("value", ["ci-bot", "_x", "a" * 32, "deploy_2"])
def test_good_service_user_ids(value: str) -> None:
    assert check_service_user_id(value) == value


@pytest.mark.parametrize("value", ["", "Bot", "1bot", "-bot", "a" * 33, "bot.x", "bot/x"])
def test_bad_service_user_ids_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        check_service_user_id(value)


def test_resource_names_split_and_refuse_others() -> None:
    key = str(uuid.uuid4())
    assert split_service_user_name("teams/acme/serviceUsers/ci") == ("acme", "ci")
    assert split_key_name(f"teams/acme/serviceUsers/ci/keys/{key}") == ("acme", "ci", key)
    for bad in ("teams/acme/users/ci", "teams/acme/serviceUsers/ci/keys/nope", "ci"):
        with pytest.raises(InvalidInput):
            split_key_name(bad) if "keys" in bad else split_service_user_name(bad)
    with pytest.raises(InvalidInput):
        check_key_id(key.upper())
