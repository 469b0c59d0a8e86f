"""The one way a management command finds the tenant it is told about by email."""

from django.core.management.base import CommandError

from tenants.models import User
from tenants.selectors import user_by_email


def user_for_command(email: str) -> User:
    """The user with this email (case and surrounding spaces ignored), or a CommandError that says so."""
    user = user_by_email(email)
    if user is None:
        raise CommandError(f"no user with email {email.strip()}")
    return user
