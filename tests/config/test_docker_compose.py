"""`docker-compose.yml` stays true without a Docker daemon: parsed, its services, commands, ports and the settings it
hands the app checked against what the app reads."""

import json

import yaml

from config.settings_paths import BASE_DIR


def _compose() -> dict:
    return yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())


def test_the_stack_has_its_services():
    assert set(_compose()["services"]) == {
        *("db", "pgbouncer", "redis", "minio", "minio-buckets", "web"),
        *("worker", "provisioner", "ocr-worker", "beat"),
    }


def test_web_and_worker_reach_postgres_through_pgbouncer_and_tenant_ddl_goes_direct():
    services = _compose()["services"]
    for name in ("web", "worker"):
        environment = services[name]["environment"]
        assert environment["DATABASE_URL"].startswith("postgresql://silo:silo@pgbouncer:6432/")
        (server,) = json.loads(environment["TENANT_POSTGRES_SERVERS"])
        assert server["pooler"] == "pgbouncer:6432"
        assert server["admin_url"].startswith("postgresql://silo:silo@db:5432/")
    pgbouncer = services["pgbouncer"]
    assert pgbouncer["environment"]["DB_HOST"] == "db"
    assert pgbouncer["environment"]["LISTEN_PORT"] == "6432"
    assert pgbouncer["environment"]["POOL_MODE"] == "session"
    assert "6432:6432" in pgbouncer["ports"]


def test_uploads_go_to_minio_with_a_bucket_made_before_the_app_starts():
    services = _compose()["services"]
    assert services["minio"]["command"][:2] == ["server", "/data"]
    assert "9000:9000" in services["minio"]["ports"]
    assert "mc mb --ignore-existing silo/silo-uploads-local" in services["minio-buckets"]["entrypoint"]
    for name in ("web", "worker"):
        environment = services[name]["environment"]
        assert json.loads(environment["SILO_S3_BUCKETS"]) == {"local": "silo-uploads-local"}
        assert environment["SILO_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert services[name]["depends_on"]["minio-buckets"] == {"condition": "service_completed_successfully"}
        assert "volumes" not in services[name]  # no shared folder: files live in MinIO


def test_web_migrates_then_serves_asgi_and_the_worker_runs_celery():
    services = _compose()["services"]
    assert "python manage.py migrate --noinput" in services["web"]["command"]
    # The bounded server (header timeout, 413 before the body, concurrency cap) in front of the ASGI app.
    assert "python -m config.web_server --host 0.0.0.0 --port 8000" in services["web"]["command"]
    assert "8000:8000" in services["web"]["ports"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "config", "worker"]


def test_provisioning_and_scans_have_workers_of_their_own_and_beat_runs_once():
    services = _compose()["services"]
    queues = {name: services[name]["command"][services[name]["command"].index("--queues") + 1] for name in
              ("worker", "provisioner", "ocr-worker")}  # fmt: skip
    assert queues == {"worker": "silo", "provisioner": "silo-provisioning", "ocr-worker": "silo-ocr"}
    assert services["beat"]["command"][:4] == ["celery", "-A", "config", "beat"]


def test_the_connection_total_it_declares_fits_the_server():
    environment = _compose()["services"]["web"]["environment"]
    db_command = _compose()["services"]["db"]["command"]
    max_connections = int(db_command[db_command.index("-c") + 1].split("=")[1])
    assert int(environment["TENANT_SERVER_MAX_CONNECTIONS"]) <= max_connections
    # uvicorn's one process, the ingest worker's two, the provisioner's and the OCR worker's one (beat holds none)
    assert int(environment["SILO_APP_PROCESSES"]) == 5
