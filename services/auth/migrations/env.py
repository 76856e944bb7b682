"""Alembic environment for the auth service's own migration history."""

from alembic import context

from runtime.migrations import run_service_env
from services.auth.models import Base

run_service_env(context.config, Base.metadata)
