"""The one place where sign-up and sign-in behaviour is customised (allauth adapters)."""

from __future__ import annotations

import logging
import smtplib

from allauth.account.adapter import DefaultAccountAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter

logger = logging.getLogger(__name__)


class AccountAdapter(DefaultAccountAdapter):
    def clean_email(self, email: str) -> str:
        return super().clean_email(email).lower()

    def save_user(self, request, user, form, commit: bool = True):
        """The new account's address is its own from now on: other accounts' unverified claims to it go."""
        from allauth.account.models import EmailAddress

        user = super().save_user(request, user, form, commit)
        if commit:
            EmailAddress.objects.filter(email__iexact=user.email, verified=False).exclude(user=user).delete()
        return user

    def send_mail(self, template_prefix: str, email: str, context: dict) -> None:
        """A mail server that is down or refuses must not turn the page into an error: that would fail password
        reset for everyone, and an error for known addresses only would tell whether an account exists (allauth
        mails unknown addresses too, so both fail alike; the page answers the same either way)."""
        try:
            super().send_mail(template_prefix, email, context)
        except (smtplib.SMTPException, OSError) as error:
            logger.error(
                "could not send %s mail to an address at %s: %r", template_prefix, email.rpartition("@")[2], error
            )


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def populate_user(self, request, sociallogin, data):
        user = super().populate_user(request, sociallogin, data)
        extra = sociallogin.account.extra_data or {}
        user.email = (user.email or "").lower()
        user.name = (extra.get("name") or " ".join(filter(None, [data.get("first_name"), data.get("last_name")])))[:150]
        picture = extra.get("picture") or ""
        if picture.startswith(("https://", "http://")):
            user.avatar_url = picture[:500]
        return user
