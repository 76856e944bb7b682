"""Pin matching: only the certificate whose SHA-256 the code carries is trusted."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from client.pinning import PinMismatch, certificate_sha256, find_pinned_ca
from client.tests.pki import make_pki


def test_pin_of_the_presented_ca_selects_it() -> None:
    pki = make_pki()
    pin = hashlib.sha256(pki.ca.public_bytes(serialization.Encoding.DER)).digest()
    assert certificate_sha256(pki.ca) == pin
    assert find_pinned_ca([pki.leaf, pki.ca], pin, "https://127.0.0.1:8443") == pki.ca


def test_chain_without_the_pinned_ca_is_refused_as_a_possible_man_in_the_middle() -> None:
    genuine, impostor = make_pki(name="platform CA"), make_pki(name="platform CA")
    pin = certificate_sha256(genuine.ca)
    with pytest.raises(PinMismatch) as caught:
        find_pinned_ca([impostor.leaf, impostor.ca], pin, "https://sft.example.com:443")
    assert caught.value.message == (
        "the platform at https://sft.example.com:443 did not present the CA pinned by the "
        "enrollment code — possible man-in-the-middle; check the URL and code"
    )
    assert caught.value.exit_code == 1


def test_a_chain_with_only_the_leaf_is_refused() -> None:
    pki = make_pki()
    with pytest.raises(PinMismatch):
        find_pinned_ca([pki.leaf], certificate_sha256(pki.ca), "https://127.0.0.1:8443")


def test_an_empty_chain_is_refused() -> None:
    with pytest.raises(PinMismatch):
        find_pinned_ca([], b"\0" * 32, "https://127.0.0.1:8443")
