"""Threadline settings: one file, every knob an environment variable with a safe default.

The embedded default (no variables set) runs everything in one process on SQLite; setting
DATABASE_URL / REDIS_URL / CELERY_BROKER_URL / USE_S3 moves each part to its production service.
A bad value stops start-up with ImproperlyConfigured naming the variable.
"""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from threads.ratespec import parse_rate

BASE_DIR = Path(__file__).resolve().parent.parent

# CrewAI phones home unless told not to; nothing leaves the machine unless the operator says so.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_secret(name: str, default: str = "") -> str:
    """Read NAME, or the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {path!r}: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {value}")
    return value


def env_decimal(name: str, default: str) -> Decimal:
    raw = env_str(name, default).strip() or default
    try:
        return Decimal(raw)
    except InvalidOperation as exc:
        raise ImproperlyConfigured(f"{name} must be a decimal number, got {raw!r}") from exc


def env_rate(name: str, default: str) -> str:
    """A rate limit, COUNT/PERIOD ("60/m", "10/5m", "1000/d") or "off"."""
    value = env_str(name, default).strip() or default
    try:
        parse_rate(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from exc
    return value


def env_limit_decimal(name: str) -> Decimal | None:
    """An optional non-negative amount: None when unset or empty (no limit)."""
    raw = env_str(name).strip()
    if not raw:
        return None
    value = env_decimal(name, raw)
    if not value.is_finite() or value < 0:
        raise ImproperlyConfigured(f"{name} must be an amount of 0 or more, got {raw!r}")
    return value


def env_limit_int(name: str) -> int | None:
    """An optional non-negative count: None when unset or empty (no limit)."""
    if not env_str(name).strip():
        return None
    return env_int(name, 0, minimum=0)


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default).strip().lower() or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_url(name: str, *, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """An absolute URL with one of `schemes` and a host, or "" when unset. No credentials, query
    or fragment: the code that uses it appends paths and parameters itself. The messages do not
    repeat the value, which may hold a secret."""
    raw = env_str(name).strip()
    if not raw:
        return ""
    try:
        parts = urlsplit(raw)
        has_host = bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError as exc:  # a bad port, or a malformed IPv6 literal
        raise ImproperlyConfigured(f"{name} is not a valid URL ({exc})") from exc
    if parts.scheme not in schemes or not has_host:
        raise ImproperlyConfigured(
            f"{name} must be an absolute {' or '.join(schemes)} URL with a host"
        )
    if parts.username is not None or parts.password is not None:
        raise ImproperlyConfigured(f"{name} must not carry credentials in the URL")
    if parts.query or parts.fragment:
        raise ImproperlyConfigured(f"{name} must not have a query string or fragment")
    return raw.rstrip("/")


DEBUG = env_bool("DEBUG", False)
TESTING = env_bool("THREADLINE_TESTING", False)
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    # The embedded profile keeps a random key under var/ so sessions survive restarts without
    # anyone having to invent a secret; production sets SECRET_KEY (or SECRET_KEY_FILE).
    _key_file = VAR_DIR / "secret_key"
    try:
        if not _key_file.exists():
            import secrets

            VAR_DIR.mkdir(parents=True, exist_ok=True)
            _key_file.write_text(secrets.token_urlsafe(50))
            _key_file.chmod(0o600)
        SECRET_KEY = _key_file.read_text().strip()
    except OSError as exc:
        raise ImproperlyConfigured(f"SECRET_KEY is unset and {_key_file} is not writable") from exc

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
# Browsers posting forms from another origin (or through an HTTPS proxy whose public origin the
# app cannot see): full origins, e.g. https://chat.example.com.
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
for _origin in CSRF_TRUSTED_ORIGINS:
    if "://" not in _origin:
        raise ImproperlyConfigured(
            f"CSRF_TRUSTED_ORIGINS entries need a scheme (https://host), got {_origin!r}"
        )

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "axes",
    "threads",
    "messaging",
    "agents",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "chatproject.middleware.AsyncWhiteNoiseMiddleware",
    # Before sessions and authentication: a flood from one address is refused for the price of
    # one counter (chatproject/rates.py; API paths only).
    "chatproject.rates.AddressRateLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Turns a view's database or Redis outage into 503 + Retry-After (chatproject.api).
    "chatproject.middleware.ServiceUnavailableMiddleware",
    # Last, as django-axes asks: it turns a login refused for too many failures into the 429
    # page (chatproject.web.login_locked) after the login view has run.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "chatproject.urls"
ASGI_APPLICATION = "chatproject.asgi.application"
AUTH_USER_MODEL = "threads.User"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

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
            ],
        },
    },
]

# --- Database --------------------------------------------------------------------------------

DATABASE_URL = env_secret("DATABASE_URL")
if DATABASE_URL:
    import dj_database_url

    try:
        DATABASES: dict[str, dict[str, Any]] = {
            # No persistent connections: under ASGI each request's database work runs on a
            # thread of its own, and a kept connection is only closed when garbage collected
            # (Django's docs: disable them under ASGI). PostgreSQL gets a connection pool
            # instead, so "closing" hands the connection back rather than reconnecting.
            # Health checks: after a database restart every pooled connection is dead, and the
            # pool handed them out one by one, each failing its request (seen: 4 posts in 100
            # answered 500). With them on, Django gives the pool psycopg's check_connection:
            # one empty round trip as a connection leaves the pool, and a dead one is replaced
            # before the request sees it.
            "default": dict(
                dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)
            )
        }
        if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool(
            "DB_POOL", True
        ):
            DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
                "min_size": 1,
                "max_size": env_int("DB_POOL_MAX_SIZE", 20, minimum=1),
                "timeout": 30,
            }
    except Exception as exc:  # dj_database_url raises several types for a bad URL
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "threadline.sqlite3",
            "OPTIONS": {
                # WAL lets readers run while one writer writes; IMMEDIATE takes the write lock at
                # BEGIN so two writers queue on busy_timeout instead of failing mid-transaction.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# What a request that meets a database outage is told to wait (503, Retry-After).
DATABASE_RETRY_AFTER_SECONDS = env_int("DATABASE_RETRY_AFTER_SECONDS", 2, minimum=1)
# How long a finished reply keeps retrying its closing transaction through an outage before it
# gives up; after that the reaper re-runs it (agents.services.runs._run_close).
CLOSE_RETRY_SECONDS = env_int("CLOSE_RETRY_SECONDS", 30, minimum=0)

# --- Redis, channels, Celery -----------------------------------------------------------------

REDIS_URL = env_secret("REDIS_URL")
# pubsub (default) had the better tails in the fan-out measurements; core is channels-redis'
# list-based layer, for deployments that want its delivery guarantees.
CHANNEL_LAYER = env_choice("CHANNEL_LAYER", "pubsub", ("pubsub", "core"))
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": (
                "channels_redis.pubsub.RedisPubSubChannelLayer"
                if CHANNEL_LAYER == "pubsub"
                else "channels_redis.core.RedisChannelLayer"
            ),
            # redis-py 8 caps the pool at 100 connections otherwise, and bursts then fail.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "max_connections": 1000}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "chatproject.embedded.ThreadSafeInMemoryChannelLayer"}}

CELERY_BROKER_URL = env_secret("CELERY_BROKER_URL", REDIS_URL or "memory://")
EMBEDDED_WORKER = CELERY_BROKER_URL.startswith("memory://")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A worker reserves no more tasks than it runs (acks_late: a running task is still unacked), so
# nothing waits inside one worker while another is idle. Fairness between users does not rest
# on this alone: a user's replies past REPLY_CONCURRENCY_PER_USER are never published at all.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"polling_interval": 0.05} if CELERY_BROKER_URL.startswith("memory://") else {}
)

# --- Storage ---------------------------------------------------------------------------------

USE_S3 = env_bool("USE_S3", False)
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "/media/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_URL = "/static/"
# The web UI's own assets, vendored libraries included (nothing loads from a CDN).
STATICFILES_DIRS = [BASE_DIR / "static"]

# Presigned download URLs are credentials: they live at most five minutes.
PRESIGNED_URL_MAX_SECONDS = 300

if USE_S3:
    _bucket = env_str("AWS_STORAGE_BUCKET_NAME")
    if not _bucket:
        raise ImproperlyConfigured("AWS_STORAGE_BUCKET_NAME is required when USE_S3=1")
    _endpoint = env_url("AWS_S3_ENDPOINT_URL")
    _default_storage: dict[str, Any] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": _bucket,
            "access_key": env_secret("AWS_ACCESS_KEY_ID") or None,
            "secret_key": env_secret("AWS_SECRET_ACCESS_KEY") or None,
            "endpoint_url": _endpoint or None,
            "region_name": env_str("AWS_S3_REGION_NAME") or None,
            "signature_version": env_choice("AWS_S3_SIGNATURE_VERSION", "s3v4", ("s3v4", "s3")),
            # S3-compatible servers (R2, MinIO, Ceph) reached through an endpoint URL rarely
            # have a wildcard DNS name per bucket; AWS itself works either way.
            "addressing_style": env_choice(
                "AWS_S3_ADDRESSING_STYLE",
                "path" if _endpoint else "auto",
                ("auto", "path", "virtual"),
            ),
            # Never overwrite: names are ids, and a clash is a bug, not an update.
            "file_overwrite": False,
            # Objects are private; clients reach them only through presigned URLs.
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": env_int(
                "AWS_QUERYSTRING_EXPIRE",
                PRESIGNED_URL_MAX_SECONDS,
                minimum=1,
                maximum=PRESIGNED_URL_MAX_SECONDS,
            ),
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT},
    }

STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG or TESTING
            # Hashed names and hashed imports between the UI's ES modules, so that browsers may
            # cache every file for good: chatproject/staticfiles.py.
            else "chatproject.staticfiles.StaticStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- Product limits --------------------------------------------------------------------------

MAX_FILE_SIZE_MB = env_int("MAX_FILE_SIZE_MB", 25, minimum=1)
MAX_MESSAGE_CHARS = env_int("MAX_MESSAGE_CHARS", 32_000, minimum=1)
MAX_CHAT_HISTORY_CONTEXT = env_int("MAX_CHAT_HISTORY_CONTEXT", 20, minimum=1)
# Non-file request bodies (JSON) are small; uploads go through their own limit above.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BODY_KB", 1024, minimum=64) * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = None

# The default model: the bundled one (local), or with `openai` the model LLM_MODEL at the
# OpenAI-compatible server LLM_BASE_URL, made the catalog's default on migrate
# (agents.env_model). Catalog entries with provider openai use the same server.
LLM_PROVIDER = env_choice("LLM_PROVIDER", "local", ("local", "openai"))
LLM_BASE_URL = env_str("LLM_BASE_URL")
LLM_API_KEY = env_secret("LLM_API_KEY")
LLM_MODEL = env_str("LLM_MODEL")
LLM_CONTEXT_WINDOW = env_int("LLM_CONTEXT_WINDOW", 8192, minimum=256)
LLM_MAX_OUTPUT_TOKENS = env_int("LLM_MAX_OUTPUT_TOKENS", 1024, minimum=16)
if LLM_PROVIDER == "openai" and not LLM_MODEL:
    raise ImproperlyConfigured("LLM_PROVIDER=openai needs LLM_MODEL: the model to ask")
AGENT_MODE = env_choice("AGENT_MODE", "auto", ("auto", "crew", "core"))
LLM_TIMEOUT_SECONDS = env_int("LLM_TIMEOUT_SECONDS", 60, minimum=1)
# The external agent behind models whose provider is grpc_agent (AI-at-Work's AIService.Process):
# host:port (or any gRPC target, e.g. unix:/run/agent.sock), and how long one turn may take.
AGENT_GRPC_TARGET = env_str("AGENT_GRPC_TARGET").strip()
if AGENT_GRPC_TARGET and (
    any(ch.isspace() for ch in AGENT_GRPC_TARGET)
    or not (AGENT_GRPC_TARGET.startswith("unix:") or AGENT_GRPC_TARGET.rpartition(":")[2].isdigit())
):
    raise ImproperlyConfigured(
        f"AGENT_GRPC_TARGET must be host:port (or unix:PATH), got {AGENT_GRPC_TARGET!r}"
    )
AGENT_GRPC_TIMEOUT_SECONDS = env_int("AGENT_GRPC_TIMEOUT_SECONDS", 60, minimum=1)
# Every new user's starting credit, in the ledger's currency (the bundled model is free).
STARTING_BALANCE = env_decimal("STARTING_BALANCE", "1.00")
# Every user's budgets, unless the admin gives the user their own for that period (Budget):
# money per day and per month, tokens per day and per month. Unset: no such limit. Periods
# start at midnight (and the 1st) in TIME_ZONE.
BUDGET_DAILY = env_limit_decimal("BUDGET_DAILY")
BUDGET_MONTHLY = env_limit_decimal("BUDGET_MONTHLY")
BUDGET_DAILY_TOKENS = env_limit_int("BUDGET_DAILY_TOKENS")
BUDGET_MONTHLY_TOKENS = env_limit_int("BUDGET_MONTHLY_TOKENS")
# Streaming: deltas are batched for this long before one event goes out; the partial text is
# saved (and the stop flag read) this often; the heartbeat goes every second, and a run whose
# heartbeat is older than RUN_STALE_SECONDS lost its worker.
STREAM_FLUSH_MS = env_int("STREAM_FLUSH_MS", 50, minimum=0)
STREAM_SAVE_MS = env_int("STREAM_SAVE_MS", 300, minimum=50)
RUN_STALE_SECONDS = env_int("RUN_STALE_SECONDS", 5, minimum=2)
# A reply handed to the broker that no worker has claimed this long is sent again once (a
# broker restart without persistence loses its queue), and failed, its reservation released,
# if it waits that long once more: longer than a reply waits for a worker on a busy deployment.
QUEUED_STALE_SECONDS = env_int("QUEUED_STALE_SECONDS", 120, minimum=5)
# Upkeep after a reply (agents.housekeeping): a title for a thread still called "New chat", and
# the rolling summary of turns older than the context; each one more model call, not charged.
# A call that failed is not tried again for the thread for UPKEEP_RETRY_SECONDS.
TITLE_GENERATION = env_bool("TITLE_GENERATION", True)
SUMMARY_GENERATION = env_bool("SUMMARY_GENERATION", True)
UPKEEP_RETRY_SECONDS = env_int("UPKEEP_RETRY_SECONDS", 3600, minimum=0)
RUN_TIME_LIMIT_SECONDS = env_int("RUN_TIME_LIMIT_SECONDS", 300, minimum=10)

# Workers that outlive their broker's restart (docs/reliability.md): reconnect for as long as it
# takes, at start-up too; on Redis, kombu's transport with the released-connection fix
# (chatproject/broker.py), a health check on idle connections, and a visibility timeout just
# above the longest a run may take, so an unacknowledged message is delivered again only when
# its worker is surely gone (the default, an hour, left such replies queued that long).
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_BROKER_HEARTBEAT = 10  # AMQP only; Redis uses health_check_interval below
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT = "chatproject.broker:RedisTransport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": RUN_TIME_LIMIT_SECONDS + 120,
        "health_check_interval": 10,
        "socket_keepalive": True,
        "retry_on_timeout": True,
    }

# Fair scheduling (agents.services.lines): a user has at most this many replies generating at
# once (LibreChat's CONCURRENT_MESSAGE_MAX); more wait, held back from the broker, up to
# REPLY_QUEUE_PER_USER of them; past that a request is refused (429 reply_queue_full).
REPLY_CONCURRENCY_PER_USER = env_int("REPLY_CONCURRENCY_PER_USER", 2, minimum=1)
REPLY_QUEUE_PER_USER = env_int("REPLY_QUEUE_PER_USER", 20, minimum=0)
# The embedded worker's threads: more than one user's cap, so one busy user never fills them.
EMBEDDED_WORKER_CONCURRENCY = env_int("EMBEDDED_WORKER_CONCURRENCY", 4, minimum=1)
# The operator's data gateway, read by the crew's gateway tool (agents.gateway); unset: no tool.
GATEWAY_URL = env_url("GATEWAY_URL")
GATEWAY_TIMEOUT_SECONDS = env_int("GATEWAY_TIMEOUT_SECONDS", 10, minimum=1, maximum=300)
GATEWAY_MAX_BYTES = env_int("GATEWAY_MAX_BYTES", 1024 * 1024, minimum=1)
# Addresses a gateway host name may resolve to are public ones unless this is on; a URL that
# names an IP address itself is trusted as the operator's explicit choice.
GATEWAY_ALLOW_PRIVATE = env_bool("GATEWAY_ALLOW_PRIVATE", False)
# The crew: at most this many run at once across the deployment (the rest wait in the queue,
# and their messages say so); each agent takes at most CREW_MAX_STEPS reasoning steps and a run
# at most CREW_MAX_TOOL_CALLS tool calls. Crews go to their own Celery queue so a worker
# serving single-model replies never waits behind one.
CREW_MAX_CONCURRENCY = env_int("CREW_MAX_CONCURRENCY", 3, minimum=1)
CREW_MAX_STEPS = env_int("CREW_MAX_STEPS", 6, minimum=1)
CREW_MAX_TOOL_CALLS = env_int("CREW_MAX_TOOL_CALLS", 16, minimum=1)
CREW_QUEUE = env_str("CREW_QUEUE", "crew")
# A plain `celery worker` consumes both queues; `-Q crew` makes a crew-only worker.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = [Queue("celery"), Queue(CREW_QUEUE)]

# The cache holds short-lived secrets between the request and the worker (the asker's token
# for the gateway tool): Redis when there is one, so every process sees it.
CACHES: dict[str, Any] = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    ),
    # The rate-limit counters: in Redis shared by every process (with a one-round-trip incr,
    # chatproject/ratecache.py), in process memory on the embedded profile.
    "rates": (
        {"BACKEND": "chatproject.ratecache.CounterRedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "rates"}
    ),
    # This process's own: what is cheap to recompute and may be a little stale (a user's
    # effective rate limits), kept without a network round trip.
    "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "local"},
}

# Rate limits (threads.rates; docs/limits.md, "Rate limits"), counted in the cache above: shared
# by every process with Redis, in process memory on the embedded profile. Per user, each
# overridable per group in the admin (Group limits; the most generous of a user's groups wins):
RATE_LIMITS = env_bool("RATE_LIMITS", True)
RATE_LIMIT_POSTS = env_rate("RATE_LIMIT_POSTS", "60/m")  # messages posted, with or without reply
RATE_LIMIT_REPLIES = env_rate("RATE_LIMIT_REPLIES", "20/m")  # AI replies asked for, regenerates too
RATE_LIMIT_UPLOADS = env_rate("RATE_LIMIT_UPLOADS", "30/m")
RATE_LIMIT_WS_CONNECTS = env_rate("RATE_LIMIT_WS_CONNECTS", "30/m")
RATE_LIMIT_WS_SUBSCRIBES = env_rate("RATE_LIMIT_WS_SUBSCRIBES", "300/m")
# Per client address (TRUSTED_PROXY_COUNT decides it): every HTTP API request (/api/, /chat-svc/,
# /upload), and every socket connect. Generous: many people may share one address behind a NAT.
RATE_LIMIT_IP_REQUESTS = env_rate("RATE_LIMIT_IP_REQUESTS", "1200/m")
RATE_LIMIT_IP_WS_CONNECTS = env_rate("RATE_LIMIT_IP_WS_CONNECTS", "120/m")
# How long a user's effective rates (their groups' overrides) are cached.
RATE_LIMIT_GROUP_CACHE_SECONDS = env_int("RATE_LIMIT_GROUP_CACHE_SECONDS", 30, minimum=1)
RATELIMIT_USE_CACHE = "rates"
# A cache that cannot count lets requests through (threads.rates.rate_take logs it).
RATELIMIT_FAIL_OPEN = True

# --- Auth, sessions, security ----------------------------------------------------------------

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out username or address before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "threads.backends.OneQueryModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# HTTPS. The embedded default serves plain http://127.0.0.1, so every switch is off until the
# operator says the site is reached over HTTPS. BEHIND_HTTPS_PROXY=1 (TLS ends at nginx or a
# load balancer that sets X-Forwarded-Proto and strips any client copy of it) makes Django see
# those requests as secure, and turns on secure cookies and the redirect to HTTPS by default.
# HSTS stays opt-in: browsers remember it for SECURE_HSTS_SECONDS even after it is turned off.
BEHIND_HTTPS_PROXY = env_bool("BEHIND_HTTPS_PROXY", False)
if BEHIND_HTTPS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", BEHIND_HTTPS_PROXY)
# Load balancers probe /healthz over plain HTTP inside the network; a redirect would fail them.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", BEHIND_HTTPS_PROXY)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", SESSION_COOKIE_SECURE)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

# The client's address. Behind N reverse proxies that each append to X-Forwarded-For, the
# address the outermost trusted proxy saw is the N-th entry from the right; anything further
# left was written by the client and is ignored. 0 (the default): REMOTE_ADDR only, and the
# header is never read, since anyone can send it. chatproject.client_ip applies this for the
# login lockout; DRF's throttles read the same count (NUM_PROXIES below).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0, maximum=10)

# Login protection (django-axes), for every login that goes through django.contrib.auth's
# authenticate(): the web UI's /login/ and the admin's. Failures count per username and, apart,
# per client address (an unknown username counts like a known one, so the answers never tell
# them apart). From LOGIN_BACKOFF_AFTER failures on, the next attempt must wait
# LOGIN_BACKOFF_SECONDS, doubling with each further failure; at LOGIN_FAILURE_LIMIT failures
# the username or address is locked out for LOGIN_COOLOFF_MINUTES after its last failure, or
# until an operator deletes its record in the admin ("Access attempts") or runs
# `manage.py axes_reset_username <name>` / `axes_reset_ip <address>`.
# The counters live in the database (axes' database handler), not in the cache: they are then
# shared by every process on PostgreSQL (as on the one-process SQLite profile), survive a Redis
# flush, and the admin can list and clear them; the cache handler keeps no records to show.
# Login attempts are rare enough that the one row written per failure costs nothing.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_COOLOFF_MINUTES = env_int("LOGIN_COOLOFF_MINUTES", 15, minimum=1)
LOGIN_BACKOFF_AFTER = env_int("LOGIN_BACKOFF_AFTER", 3, minimum=1)
LOGIN_BACKOFF_SECONDS = env_int("LOGIN_BACKOFF_SECONDS", 2, minimum=0)  # 0: no backoff
AXES_ENABLED = env_bool("LOGIN_PROTECTION", True)
AXES_HANDLER = "chatproject.login_guard.BackoffDatabaseHandler"
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_CLIENT_IP_CALLABLE = "chatproject.client_ip.client_ip"
AXES_LOCKOUT_CALLABLE = "chatproject.web.login_locked"
# A refused attempt (already locked, or inside its backoff) checked no password, so it does not
# count again: hammering a locked login does not stretch the lockout without end.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A successful login does not clear the counters: axes would clear the whole address's
# failures too, so an attacker with one account could reset them between guesses.
AXES_RESET_ON_SUCCESS = False
# Only failures are kept; a row per successful login would be a second, unbounded login log.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- REST API --------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "threads.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "chatproject.api.AutoSchema",
    "EXCEPTION_HANDLER": "chatproject.api.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "NON_FIELD_ERRORS_KEY": "nonFieldErrors",
    # Throttles key on the client address: the same trust in X-Forwarded-For as the login
    # lockout (DRF's default, None, would believe whatever the client sends).
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Threadline API",
    "DESCRIPTION": (
        "Threads, messages, topics, files and permissions. Errors share one shape: "
        '`{"error": {"code", "message", "fields"}}`. Authenticate with '
        "`Authorization: Bearer <token>` (or `Token <token>`) or a session cookie."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # The PATCH routes validate their input as given (a message edit needs its text), so the
    # schema must not turn every field optional for them.
    "COMPONENT_SPLIT_PATCH": False,
    "CAMELIZE_NAMES": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
