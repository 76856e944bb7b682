"""The CA service's tables (all prefixed `ca_`). Private keys are only ever stored encrypted.

The authorities and issuance log arrive with the CA issue; the migration history
exists from the start so the service can be migrated on its own.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from runtime.database import NAMING_CONVENTION

__all__ = ["Base"]


class Base(DeclarativeBase):
    """Declarative base for CA tables only."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
