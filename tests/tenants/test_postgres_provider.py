"""The `postgres` provider: a role and a database per tenant on a server we administer."""

import psycopg
import pytest

from tenants.models import new_tenant_key
from tenants.provisioners.postgres import AdministeredServer, PostgresProvisioner, TEMPLATE_DATABASE
from tenants.provisioners.base import ProvisioningError


@pytest.fixture
def provisioner(admin_dsn):
    return PostgresProvisioner([AdministeredServer(name="primary", region="local", admin_url=admin_dsn)])


@pytest.fixture
def tenant_keys(provisioner):
    keys = []
    yield keys
    for key in keys:
        provisioner.delete(f"silo_t_{key}", "primary")


def _databases(admin_dsn, name):
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        return admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone()[0]


@pytest.mark.django_db
def test_create_gives_the_tenant_its_own_role_and_database_with_pgvector(provisioner, tenant_keys, admin_dsn):
    key = new_tenant_key()
    tenant_keys.append(key)

    placed = provisioner.create(key, "local")

    assert placed.external_id == f"silo_t_{key}"
    assert placed.region == "local"
    with psycopg.connect(placed.dsn) as tenant:
        user, database = tenant.execute("SELECT current_user, current_database()").fetchone()
        extensions = [row[0] for row in tenant.execute("SELECT extname FROM pg_extension")]
        tables = {row[0] for row in tenant.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        owners = {row[0] for row in tenant.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert (user, database) == (f"silo_t_{key}", f"silo_t_{key}")
    assert "vector" in extensions
    # Cloned from the template: the schema is already there, owned by the tenant's role.
    assert {"embeddings", "conversations", "messages", "tenant_settings"} <= tables
    assert owners == {f"silo_t_{key}"}
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        privileges = admin.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s", [f"silo_t_{key}"]
        ).fetchone()
    assert privileges == (False, False, False)


@pytest.mark.django_db
def test_create_is_idempotent(provisioner, tenant_keys, admin_dsn):
    key = new_tenant_key()
    tenant_keys.append(key)

    first = provisioner.create(key, "local")
    with psycopg.connect(first.dsn, autocommit=True) as tenant:
        tenant.execute("CREATE TABLE marker (id int)")
    second = provisioner.create(key, "local")

    assert second.external_id == first.external_id
    assert _databases(admin_dsn, first.external_id) == 1
    with psycopg.connect(second.dsn) as tenant:  # fresh credentials work, the old database was kept
        assert tenant.execute("SELECT count(*) FROM marker").fetchone() == (0,)


@pytest.mark.django_db
def test_a_tenant_cannot_connect_to_another_tenants_database(provisioner, tenant_keys):
    alice, bob = new_tenant_key(), new_tenant_key()
    tenant_keys += [alice, bob]
    alice_db = provisioner.create(alice, "local")
    bob_db = provisioner.create(bob, "local")

    alice_into_bob = alice_db.dsn.rsplit("/", 1)[0] + "/" + bob_db.external_id
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(alice_into_bob)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(alice_db.dsn.rsplit("/", 1)[0] + "/" + TEMPLATE_DATABASE)


@pytest.mark.django_db
def test_delete_drops_database_and_role_and_is_idempotent(provisioner, admin_dsn):
    key = new_tenant_key()
    placed = provisioner.create(key, "local")
    held_open = psycopg.connect(placed.dsn)  # a connection still open does not block erasure

    provisioner.delete(placed.external_id, "primary")
    provisioner.delete(placed.external_id, "primary")

    held_open.close()
    assert _databases(admin_dsn, placed.external_id) == 0
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", [placed.external_id]).fetchone() == (
            0,
        )


@pytest.mark.django_db
def test_dsn_issues_fresh_credentials_and_the_old_password_stops_working(provisioner, tenant_keys):
    key = new_tenant_key()
    tenant_keys.append(key)
    placed = provisioner.create(key, "local")

    fresh = provisioner.dsn(placed.external_id, "primary")

    assert fresh.dsn != placed.dsn
    with psycopg.connect(fresh.dsn) as tenant:
        assert tenant.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(placed.dsn)


@pytest.mark.django_db
def test_placement_prefers_the_requested_region_and_refuses_an_unknown_one(admin_dsn, tenant_keys):
    provisioner = PostgresProvisioner(
        [
            AdministeredServer(name="primary", region="eu", admin_url=admin_dsn),
        ]
    )
    key = new_tenant_key()
    tenant_keys.append(key)

    assert provisioner.create(key, "eu").region == "eu"
    with pytest.raises(ProvisioningError, match="no tenant database server in region 'us'"):
        provisioner.create(new_tenant_key(), "us")
