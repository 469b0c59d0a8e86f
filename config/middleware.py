"""Middleware of our own: the headers every response gets (the Content Security Policy, and no caching of anything a
signed-in person sees)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.cache import patch_cache_control
from django.utils.deprecation import MiddlewareMixin


class SecurityHeadersMiddleware(MiddlewareMixin):
    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            # Tenant data (pages, the PDF, status JSON, the export) must not stay in a shared or back-button cache
            # after the person signs out.
            patch_cache_control(response, no_store=True, private=True)
        return response
