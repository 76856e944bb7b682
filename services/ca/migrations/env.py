"""Alembic environment for the ca service's own migration history."""

from alembic import context

from runtime.migrations import run_service_env
from services.ca.models import Base

run_service_env(context.config, Base.metadata)
