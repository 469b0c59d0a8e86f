"""Settings come from the environment; malformed values stop the app instead of falling back."""

import os
import subprocess
import sys

import pytest

from config.environment import ImproperEnvironment, env_bool, env_int, env_list
from config.settings_paths import BASE_DIR


def test_malformed_values_are_errors_not_defaults(monkeypatch):
    monkeypatch.setenv("SOME_FLAG", "maybe")
    monkeypatch.setenv("SOME_NUMBER", "ten")
    monkeypatch.setenv("SMALL_NUMBER", "0")

    with pytest.raises(ImproperEnvironment, match="SOME_FLAG='maybe' is not a boolean"):
        env_bool("SOME_FLAG")
    with pytest.raises(ImproperEnvironment, match="SOME_NUMBER='ten' is not an integer"):
        env_int("SOME_NUMBER", 5)
    with pytest.raises(ImproperEnvironment, match="SMALL_NUMBER=0 must be at least 1"):
        env_int("SMALL_NUMBER", 5, minimum=1)


def test_unset_and_empty_values_take_the_default(monkeypatch):
    monkeypatch.delenv("UNSET_FLAG", raising=False)
    monkeypatch.setenv("EMPTY_LIST", "")

    assert env_bool("UNSET_FLAG", True) is True
    assert env_list("EMPTY_LIST", ["a"]) == ["a"]
    monkeypatch.setenv("EMPTY_LIST", " x, ,y ")
    assert env_list("EMPTY_LIST") == ["x", "y"]


def _manage(*arguments: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=BASE_DIR,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_malformed_variable_stops_manage_py_with_its_name():
    result = _manage("check", TENANT_POOL_MAX_TOTAL_CONNECTIONS="lots")

    assert result.returncode != 0
    assert "TENANT_POOL_MAX_TOTAL_CONNECTIONS='lots' is not an integer" in result.stderr


def test_unknown_tenant_provider_is_refused():
    result = _manage("check", TENANT_PROVIDER="sqlite")

    assert result.returncode != 0
    assert "TENANT_PROVIDER='sqlite' must be 'postgres' or 'neon'" in result.stderr


def test_production_settings_pass_the_deployment_checklist():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SECRET_KEY="x" * 20 + "-production-secret-key-with-plenty-of-entropy-0123456789",
        DJANGO_ALLOWED_HOSTS="silo.example.com",
        SILO_HTTPS="true",
        DJANGO_DEBUG="false",
    )

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_embedded_defaults_do_not_pass_the_deployment_checklist():
    result = _manage("check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode != 0
    assert "SECURE_SSL_REDIRECT" in result.stderr or "security.W008" in result.stderr


def test_unknown_local_embedding_precision_is_refused():
    result = _manage("check", EMBEDDING_LOCAL_PRECISION="float16")

    assert result.returncode != 0
    assert "EMBEDDING_LOCAL_PRECISION='float16' must be 'auto', 'float32' or 'bfloat16'" in result.stderr


@pytest.mark.parametrize(
    ("limit", "pool"),
    [("51", "4"), ("4", "4"), ("10", "12")],
)
def test_a_tenant_role_connection_limit_outside_its_bounds_is_refused(limit, pool):
    result = _manage("check", TENANT_ROLE_CONNECTION_LIMIT=limit, TENANT_POOL_MAX_PER_TENANT=pool)

    assert result.returncode != 0
    assert (
        f"TENANT_ROLE_CONNECTION_LIMIT={limit} must be above TENANT_POOL_MAX_PER_TENANT ({pool}) and at most 50"
        in result.stderr
    )


def test_tenant_sessions_may_not_idle_out_before_the_pool_closes_them():
    result = _manage("check", TENANT_ROLE_IDLE_SESSION_TIMEOUT_SECONDS="200", TENANT_POOL_IDLE_SECONDS="300")

    assert result.returncode != 0
    assert "TENANT_ROLE_IDLE_SESSION_TIMEOUT_SECONDS=200 must be above TENANT_POOL_IDLE_SECONDS (300)" in result.stderr
