"""The admin shows the registry to operators, never the tenants' credentials."""

import pytest
from django.urls import reverse

from tenants import services
from tenants.crypto import decrypt_credentials
from tenants.models import VectorDatabase
from tests.helpers import personal_workspace


@pytest.mark.django_db(transaction=True)
def test_registry_admin_pages_show_the_database_but_not_its_credentials(client, django_user_model, owner):
    operator = django_user_model.objects.create_superuser(email="ops@example.com", password="operator pass 123")
    row = services.vector_database_provision(
        VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres").id
    )
    password = decrypt_credentials(row.encrypted_credentials)["dsn"].split(":")[2].split("@")[0]
    client.force_login(operator)
    try:
        listing = client.get(reverse("admin:tenants_vectordatabase_changelist"))
        detail = client.get(reverse("admin:tenants_vectordatabase_change", args=[row.id]))

        assert listing.status_code == detail.status_code == 200
        assert row.external_id in detail.content.decode()
        for page in (listing, detail):
            assert password not in page.content.decode()
            assert row.encrypted_credentials not in page.content.decode()
    finally:
        services.vector_database_deprovision(row.id)
