"""The one place where sign-up and sign-in behaviour is customised (allauth adapters)."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter


class AccountAdapter(DefaultAccountAdapter):
    def clean_email(self, email: str) -> str:
        return super().clean_email(email).lower()


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
