from django.conf import settings
from django.http import HttpRequest


def silo(request: HttpRequest) -> dict:
    return {"google_sign_in_enabled": settings.GOOGLE_SIGN_IN_ENABLED}
