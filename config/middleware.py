"""Middleware of our own: static files that keep the ASGI request path asynchronous, and the headers every response
gets (the Content Security Policy, and no caching of anything a signed-in person sees)."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.cache import patch_cache_control
from django.utils.deprecation import MiddlewareMixin
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, able to run in an asynchronous chain. WhiteNoise's own middleware is synchronous only, so Django
    ran every ASGI request through it in a worker thread and the rest of the chain back on the event loop: two thread
    hand-overs per request, and one more per later middleware step. Here a request for a static file is served in a
    thread (it opens the file) and every other request goes straight on."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response, settings=settings) -> None:
        super().__init__(get_response, settings)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request):
        static_file = self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)
        return await self.get_response(request)


class SecurityHeadersMiddleware(MiddlewareMixin):
    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            # Tenant data (pages, the PDF, status JSON, the export) must not stay in a shared or back-button cache
            # after the person signs out.
            patch_cache_control(response, no_store=True, private=True)
        return response
