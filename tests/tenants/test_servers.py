"""Several administered Postgres servers: `tenants servers` shows them, placement honours draining and capacity, and a
server that is down takes its own tenants out, no one else's. Two real embedded servers (the wheel starts a second
one on another port and data folder)."""

import io
import shutil

import psycopg
import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from config.embedded_postgres import ensure_running, stop
from tenants import services
from tenants.models import TenantServer, User, VectorDatabase
from tests.helpers import personal_workspace


@pytest.fixture(scope="module")
def second_server():
    data_root = django_settings.DATA_DIR / "second-server"
    server = ensure_running(data_root, fast_unsafe=True)
    yield data_root, server
    stop(data_root)
    shutil.rmtree(data_root, ignore_errors=True)


@pytest.fixture
def two_servers(transactional_db, settings, second_server, admin_dsn):
    _data_root, server = second_server
    settings.TENANT_POSTGRES_SERVERS = [
        {"name": "embedded", "region": "local", "admin_url": admin_dsn},
        {"name": "second", "region": "local", "admin_url": server.dsn()},
    ]
    yield settings.TENANT_POSTGRES_SERVERS
    for row in VectorDatabase.objects.exclude(status=VectorDatabase.Status.DELETED):
        services.vector_database_deprovision(row.id)


def _tenant(email: str) -> VectorDatabase:
    user = User.objects.create_user(email=email)
    return services.vector_database_provision(
        VectorDatabase.objects.create(workspace=personal_workspace(user), provider="postgres").id
    )


def _servers(*arguments) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("tenants", "servers", *arguments, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _line(out: str, server: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(server + " "))


def test_a_draining_server_takes_no_new_tenants_and_undrain_opens_it_again(two_servers):
    _servers("drain", "embedded")

    placed = [_tenant(f"drained{number}@example.com").server for number in range(2)]

    assert placed == ["second", "second"]
    out, err = _servers()
    assert _line(out, "embedded")[2] == "draining"
    assert _line(out, "second")[2:4] == ["open", "2"]
    assert err == ""
    _servers("undrain", "embedded")
    assert _tenant("open@example.com").server == "embedded"  # the least loaded again
    assert not TenantServer.objects.filter(draining=True).exists()


def test_drain_names_a_known_server(two_servers):
    with pytest.raises(CommandError, match=r"no server 'third' in TENANT_POSTGRES_SERVERS \(known: embedded, second\)"):
        _servers("drain", "third")
    with pytest.raises(CommandError, match="name the server to drain"):
        _servers("drain")
    assert not TenantServer.objects.exists()


def test_placement_honours_each_servers_capacity(two_servers, settings):
    settings.TENANT_POSTGRES_SERVERS = [
        {**two_servers[0], "max_tenants": 1_000_000},
        {**two_servers[1], "max_tenants": 1},
    ]
    _servers("drain", "embedded")
    assert _tenant("first@example.com").server == "second"

    user = User.objects.create_user(email="second@example.com")
    refused = VectorDatabase.objects.create(workspace=personal_workspace(user), provider="postgres")
    with pytest.raises(
        services.ProvisioningFailed,
        match=r"no tenant database server in any region takes new tenants \(down: none; draining: embedded; the "
        r"others are full\): add a server or raise max_tenants",
    ):
        services.vector_database_provision(refused.id)

    refused.refresh_from_db()
    assert (refused.status, refused.external_id) == (VectorDatabase.Status.FAILED, "")
    out, _ = _servers()
    second = _line(out, "second")
    assert (second[3], second[5]) == ("1", "0")  # one tenant, no room left


def test_a_server_that_is_down_shows_its_tenants_unavailable_and_the_others_keep_working(
    two_servers, second_server, client
):
    data_root, _server = second_server
    _servers("drain", "embedded")
    on_second = _tenant("second-home@example.com")
    _servers("undrain", "embedded")
    on_embedded = _tenant("embedded-home@example.com")
    assert (on_second.server, on_embedded.server) == ("second", "embedded")
    stop(data_root)
    try:
        out, err = _servers()

        assert _line(out, "second")[2:4] == ["DOWN", "1"]
        assert "UNREACHABLE second: cannot reach PostgreSQL server 'second'" in err
        assert "its 1 tenant(s) are unavailable" in err
        # New tenants go to the server that is up; the tenant there is reachable as ever.
        assert _tenant("newcomer@example.com").server == "embedded"
        with psycopg.connect(services.vector_database_credentials(on_embedded)["dsn"]) as connection:
            assert connection.execute("SELECT count(*) FROM embeddings").fetchone() == (0,)
        # In the app: the tenant on the down server reads why chat is closed; the other chats as ever.
        client.force_login(on_second.workspace.owner)
        page = client.get(reverse("chat"))
        assert page.status_code == 200
        assert "Your database cannot be reached right now" in page.content.decode()
        client.force_login(on_embedded.workspace.owner)
        page = client.get(reverse("chat"))
        assert page.status_code == 200
        assert "cannot be reached" not in page.content.decode()
    finally:
        ensure_running(data_root, fast_unsafe=True)
