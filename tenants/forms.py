"""allauth's forms where Silo's rules differ from its defaults (registered in settings.ACCOUNT_FORMS)."""

from __future__ import annotations

from allauth.account.adapter import get_adapter
from allauth.account.forms import SignupForm as AllauthSignupForm
from allauth.account.models import EmailAddress

from tenants.models import User


class SignupForm(AllauthSignupForm):
    def validate_unique_email(self, value: str) -> str:
        """An address is taken when it is someone's sign-in address or an address they verified. Someone else's
        unverified claim to it (added on their email page, never confirmed) does not count: it would let anyone
        block the real owner's sign-up."""
        taken = (
            User.objects.filter(email__iexact=value).exists()
            or EmailAddress.objects.filter(email__iexact=value, verified=True).exists()
        )
        if taken:
            raise get_adapter().validation_error("email_taken")
        self.account_already_exists = False
        return value
