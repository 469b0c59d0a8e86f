"""The web server `make run` starts (and the Dockerfile runs) bounds what a stranger can hold, over real sockets: a
body larger than the upload limit gets 413 before a byte of it is read, a client that dawdles over its headers is cut
off, and past its concurrency it answers 503 instead of taking every connection."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
import pytest
from django.conf import settings

from config.run_local import main as run_local_main
from config.settings_paths import BASE_DIR
from config.web_server import web_server_command
from tests.conftest import _worker_environment

pytestmark = pytest.mark.timeout(180)

HEADER_TIMEOUT_SECONDS = 2
MAX_CONCURRENCY = 4
UPLOAD_MAX_BYTES = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, tmp_path_factory):
    """`make run`'s web server command on a port of its own, bound to the test database, with short bounds."""
    from django.db import connection

    port = free_port()
    environment = _worker_environment(connection.settings_dict["NAME"])
    environment.update(
        WEB_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT_SECONDS),
        UPLOAD_MAX_BYTES=str(UPLOAD_MAX_BYTES),
    )
    environment.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log = tmp_path_factory.mktemp("web") / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            web_server_command("127.0.0.1", port, max_concurrency=MAX_CONCURRENCY),
            cwd=BASE_DIR,
            env=environment,
            stdout=output,
            stderr=output,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    yield ("127.0.0.1", port)
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def connect(address) -> socket.socket:
    connection = socket.create_connection(address, timeout=15)
    return connection


def read_status_line(connection: socket.socket) -> str:
    received = b""
    while b"\r\n" not in received:
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    return received.split(b"\r\n", 1)[0].decode()


def closed_by_server_within(connection: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection, or None if it still had not after `seconds`."""
    started = time.monotonic()
    connection.settimeout(seconds)
    try:
        while connection.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


@pytest.mark.parametrize("path", ["/nowhere", "/documents/upload"])
def test_a_body_larger_than_the_upload_limit_gets_413_before_any_of_it_is_sent(server, path):
    with connect(server) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {3 * 1024**3}\r\n\r\n".encode()
        )  # 3 GiB announced, not one byte of it sent

        assert read_status_line(connection) == "HTTP/1.1 413 Request Entity Too Large"


def test_a_body_within_the_limit_is_read_as_usual(server):
    response = httpx.post(f"http://{server[0]}:{server[1]}/nowhere", content=b"x" * 100_000, timeout=15)

    assert response.status_code in {403, 404}  # CSRF or no such page: the app answered, not the size check


def test_a_client_that_never_finishes_its_headers_is_cut_off(server):
    with connect(server) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        closed_after = closed_by_server_within(connection, HEADER_TIMEOUT_SECONDS + 5)

    assert closed_after is not None and closed_after >= HEADER_TIMEOUT_SECONDS - 0.5


def test_a_client_that_dribbles_its_headers_a_byte_at_a_time_is_cut_off_too(server):
    """uvicorn's own keep-alive timeout started again with every byte: a slowloris could hold a connection for ever."""
    started = time.monotonic()
    with connect(server) as connection:
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
                connection.sendall(bytes([byte]))
                time.sleep(0.25)
                if time.monotonic() - started > HEADER_TIMEOUT_SECONDS + 5:
                    break
            closed_after = closed_by_server_within(connection, 0.5)
        except (BrokenPipeError, ConnectionResetError):
            closed_after = 0.0

    assert closed_after is not None, "the server still held the connection"
    assert time.monotonic() - started < HEADER_TIMEOUT_SECONDS + 5


def test_complete_headers_are_served_and_a_kept_alive_connection_serves_the_next_request(server):
    with httpx.Client(base_url=f"http://{server[0]}:{server[1]}", timeout=15) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz").status_code == 200


def test_past_its_concurrency_the_server_answers_503_and_serves_again_once_below(server):
    idle = [connect(server) for _ in range(MAX_CONCURRENCY)]
    try:
        with connect(server) as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert read_status_line(connection) == "HTTP/1.1 503 Service Unavailable"
    finally:
        for connection in idle:
            connection.close()
    time.sleep(0.5)
    assert httpx.get(f"http://{server[0]}:{server[1]}/healthz", timeout=15).status_code == 200


def test_make_run_and_the_dockerfile_start_this_server_with_its_bounds():
    import inspect

    assert "web_server_command(host, port)" in inspect.getsource(run_local_main)
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "config.web_server", "--host", "0.0.0.0", "--port", "8000"' in dockerfile
    command = web_server_command("127.0.0.1", 8000)
    assert command[command.index("--http") + 1] == "config.web_server:HeaderTimeoutH11Protocol"
    assert int(command[command.index("--limit-concurrency") + 1]) == settings.WEB_MAX_CONCURRENCY
    assert settings.WEB_HEADER_TIMEOUT_SECONDS == 30
    assert settings.REQUEST_MAX_BODY_BYTES == settings.UPLOAD_MAX_BYTES + 1024 * 1024
