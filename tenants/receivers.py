"""Signal receivers: they only hand work to services, which enqueue Celery tasks."""

from allauth.account.signals import user_signed_up
from django.dispatch import receiver

from tenants import archives, services


@receiver(user_signed_up, dispatch_uid="tenants.provision_on_sign_up")
def provision_on_sign_up(request, user, **kwargs) -> None:
    services.vector_database_request(user)


@receiver(services.tenant_erasing, dispatch_uid="tenants.erase_archives")
def erase_archives(sender, workspace, **kwargs) -> None:
    archives.archives_erase(workspace)  # erasure leaves no backup behind
