"""`manage.py check` adds up the tenant connections every process may open and refuses a total the servers cannot take."""

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError


def test_the_default_stack_fits_the_embedded_server():
    call_command("check")


def test_too_many_processes_for_the_servers_max_connections_fail_the_check(settings):
    settings.SILO_APP_PROCESSES = 12
    settings.TENANT_POOL_MAX_TOTAL_CONNECTIONS = 40
    settings.TENANT_MIGRATION_JOBS = 8
    settings.TENANT_SERVER_MAX_CONNECTIONS = 400

    with pytest.raises(SystemCheckError, match=r"12 processes x 40 tenant connections \+ 8 migration jobs = 488"):
        call_command("check")

    settings.TENANT_SERVER_MAX_CONNECTIONS = 491  # 488 + the 3 the server reserves
    call_command("check")


def test_neon_brings_its_own_pooler(settings):
    settings.TENANT_PROVIDER = "neon"
    settings.SILO_APP_PROCESSES = 1000

    call_command("check")
