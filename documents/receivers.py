from django.dispatch import receiver

from documents import services
from tenants.services import tenant_erasing


@receiver(tenant_erasing, dispatch_uid="documents.erase_tenant_documents")
def erase_workspace_documents(sender, workspace, **kwargs) -> None:
    services.documents_erase_for_workspace(workspace)
