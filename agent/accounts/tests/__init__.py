"""Unit tests of account reconciliation: recording backend, no root, no OS changes."""
