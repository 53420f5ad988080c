"""Settings from ``FANFINITY_*`` environment variables, validated once at start-up.

Nothing else in the service reads the environment: the `Settings` built here is passed down.
A bad value stops the process with one line naming the variable.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

EMBEDDED_SCHEME = "memory://"
LOCAL_DEVELOPMENT_KEY = "local-dev-producer-key"  # what `make run`, .env.example and scripts use
# The largest bounds that keep any match's metrics body under 64 KiB (see test_fold_football).
MAX_TEAMS_LIMIT, MAX_MINUTES_LIMIT = 32, 750
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be configured with, with development-friendly defaults."""

    env: Environment = Environment.DEVELOPMENT
    mongodb_url: str = EMBEDDED_SCHEME
    db_name: str = "fanfinity"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    api_keys: frozenset[str] = field(default_factory=frozenset)
    read_api_keys: frozenset[str] = field(default_factory=frozenset)
    log_level: str = "INFO"
    log_json: bool = False
    batch_max_size: int = 500
    batch_linger_ms: float = 2.0
    ingest_queue_max: int = 20_000
    store_timeout_s: float = 2.0
    aggregator_enabled: bool = True
    aggregator_batch_size: int = 1_000
    aggregator_stall_s: float = 30.0
    metrics_cache_ms: float = 250.0
    max_teams_per_match: int = 8
    max_minutes_per_match: int = 720
    active_window_min: float = 10.0
    shutdown_grace_s: float = 10.0
    cors_origins: tuple[str, ...] = ()
    otlp_endpoint: str | None = None
    rate_limit_per_s: float = 20_000.0
    rate_limit_burst: int = 40_000
    stream_interval_ms: float = 500.0
    stream_max_subscribers: int = 0  # 0: derived from the connection budget (api/protocol.py)
    stream_max_per_client: int = 500
    stream_slow_s: float = 10.0
    max_connections: int = 0  # 0: the open-file limit minus a reserve for the store and files
    connection_reserve: int = 1_000
    head_timeout_s: float = 5.0
    body_timeout_s: float = 15.0
    forwarded_allow_ips: str = "127.0.0.1"
    metrics_key: str | None = None
    auth_failures_burst: int = 20
    auth_failures_per_s: float = 0.2
    match_list_cache_ms: float = 1_000.0
    match_list_rate_per_s: float = 20.0
    match_list_burst: int = 100
    backlog: int = 4096  # listen() queue; the kernel caps it at net.core.somaxconn

    @property
    def embedded(self) -> bool:
        """True when the data lives in this process (mongomock) rather than in MongoDB."""
        return self.mongodb_url.startswith(EMBEDDED_SCHEME)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build and validate settings; raises `SettingsError` naming the first bad variable."""
        source = os.environ if environ is None else environ
        reader = _EnvReader(source)
        defaults = cls()
        settings = cls(
            env=reader.get("FANFINITY_ENV", Environment, defaults.env),
            mongodb_url=reader.get("FANFINITY_MONGODB_URL", _mongodb_url, defaults.mongodb_url),
            db_name=reader.get("FANFINITY_DB_NAME", _db_name, defaults.db_name),
            host=reader.get("FANFINITY_HOST", _non_empty, defaults.host),
            port=reader.get("FANFINITY_PORT", _int_between(1, 65535), defaults.port),
            workers=reader.get("FANFINITY_WORKERS", _int_between(1, 64), defaults.workers),
            api_keys=reader.get("FANFINITY_API_KEYS", _key_set, defaults.api_keys),
            read_api_keys=reader.get("FANFINITY_READ_API_KEYS", _key_set, defaults.read_api_keys),
            log_level=reader.get("FANFINITY_LOG_LEVEL", _log_level, defaults.log_level),
            log_json=reader.get("FANFINITY_LOG_JSON", _boolean, defaults.log_json),
            batch_max_size=reader.get(
                "FANFINITY_BATCH_MAX_SIZE", _int_between(1, 10_000), defaults.batch_max_size
            ),
            batch_linger_ms=reader.get(
                "FANFINITY_BATCH_LINGER_MS", _float_between(0, 1_000), defaults.batch_linger_ms
            ),
            ingest_queue_max=reader.get(
                "FANFINITY_INGEST_QUEUE_MAX", _int_between(1, 1_000_000), defaults.ingest_queue_max
            ),
            store_timeout_s=reader.get(
                "FANFINITY_STORE_TIMEOUT_S", _float_between(0.05, 60), defaults.store_timeout_s
            ),
            aggregator_enabled=reader.get(
                "FANFINITY_AGGREGATOR", _boolean, defaults.aggregator_enabled
            ),
            aggregator_batch_size=reader.get(
                "FANFINITY_AGGREGATOR_BATCH_SIZE",
                _int_between(1, 100_000),
                defaults.aggregator_batch_size,
            ),
            aggregator_stall_s=reader.get(
                "FANFINITY_AGGREGATOR_STALL_S",
                _float_between(1, 3_600),
                defaults.aggregator_stall_s,
            ),
            metrics_cache_ms=reader.get(
                "FANFINITY_METRICS_CACHE_MS", _float_between(0, 5_000), defaults.metrics_cache_ms
            ),
            max_teams_per_match=reader.get(
                "FANFINITY_MAX_TEAMS_PER_MATCH",
                _int_between(2, MAX_TEAMS_LIMIT),
                defaults.max_teams_per_match,
            ),
            max_minutes_per_match=reader.get(
                "FANFINITY_MAX_MINUTES_PER_MATCH",
                _int_between(60, MAX_MINUTES_LIMIT),
                defaults.max_minutes_per_match,
            ),
            active_window_min=reader.get(
                "FANFINITY_ACTIVE_WINDOW_MIN",
                _float_between(0.1, 1_440),
                defaults.active_window_min,
            ),
            shutdown_grace_s=reader.get(
                "FANFINITY_SHUTDOWN_GRACE_S", _float_between(0, 600), defaults.shutdown_grace_s
            ),
            cors_origins=reader.get("FANFINITY_CORS_ORIGINS", _origins, defaults.cors_origins),
            otlp_endpoint=reader.get(
                "OTEL_EXPORTER_OTLP_ENDPOINT", _otlp_endpoint, defaults.otlp_endpoint
            ),
            rate_limit_per_s=reader.get(
                "FANFINITY_RATE_LIMIT_PER_S",
                _float_between(0, 1_000_000),
                defaults.rate_limit_per_s,
            ),
            rate_limit_burst=reader.get(
                "FANFINITY_RATE_LIMIT_BURST", _int_between(1, 10_000_000), defaults.rate_limit_burst
            ),
            stream_interval_ms=reader.get(
                "FANFINITY_STREAM_INTERVAL_MS",
                _float_between(100, 10_000),
                defaults.stream_interval_ms,
            ),
            stream_max_subscribers=reader.get(
                "FANFINITY_STREAM_MAX_SUBSCRIBERS",
                _int_between(0, 1_000_000),
                defaults.stream_max_subscribers,
            ),
            stream_max_per_client=reader.get(
                "FANFINITY_STREAM_MAX_PER_CLIENT",
                _int_between(0, 1_000_000),
                defaults.stream_max_per_client,
            ),
            stream_slow_s=reader.get(
                "FANFINITY_STREAM_SLOW_S", _float_between(1, 600), defaults.stream_slow_s
            ),
            max_connections=reader.get(
                "FANFINITY_MAX_CONNECTIONS", _int_between(0, 1_000_000), defaults.max_connections
            ),
            connection_reserve=reader.get(
                "FANFINITY_CONNECTION_RESERVE",
                _int_between(0, 100_000),
                defaults.connection_reserve,
            ),
            head_timeout_s=reader.get(
                "FANFINITY_HEAD_TIMEOUT_S", _float_between(0.5, 300), defaults.head_timeout_s
            ),
            body_timeout_s=reader.get(
                "FANFINITY_BODY_TIMEOUT_S", _float_between(0.5, 300), defaults.body_timeout_s
            ),
            forwarded_allow_ips=reader.get(
                "FANFINITY_FORWARDED_ALLOW_IPS", _non_empty, defaults.forwarded_allow_ips
            ),
            metrics_key=reader.get("FANFINITY_METRICS_KEY", _single_key, defaults.metrics_key),
            auth_failures_burst=reader.get(
                "FANFINITY_AUTH_FAILURES_BURST",
                _int_between(1, 1_000_000),
                defaults.auth_failures_burst,
            ),
            auth_failures_per_s=reader.get(
                "FANFINITY_AUTH_FAILURES_PER_S",
                _float_between(0.001, 10_000),
                defaults.auth_failures_per_s,
            ),
            match_list_cache_ms=reader.get(
                "FANFINITY_MATCH_LIST_CACHE_MS",
                _float_between(0, 60_000),
                defaults.match_list_cache_ms,
            ),
            match_list_rate_per_s=reader.get(
                "FANFINITY_MATCH_LIST_RATE_PER_S",
                _float_between(0, 1_000_000),
                defaults.match_list_rate_per_s,
            ),
            match_list_burst=reader.get(
                "FANFINITY_MATCH_LIST_BURST", _int_between(1, 1_000_000), defaults.match_list_burst
            ),
            backlog=reader.get("FANFINITY_BACKLOG", _int_between(1, 65_535), defaults.backlog),
        )
        settings.check_consistency()
        return settings

    def check_consistency(self) -> None:
        """Refuse combinations that would lose data or leave the service open in production."""
        if self.embedded and self.workers > 1:
            raise SettingsError(
                "FANFINITY_WORKERS: the embedded engine (memory://) keeps its data in one process; "
                "use 1 worker or a mongodb:// URL"
            )
        if self.env is Environment.PRODUCTION:
            if self.embedded:
                raise SettingsError(
                    "FANFINITY_MONGODB_URL: production refuses the embedded engine (memory://), "
                    "which loses every event on restart"
                )
            if not self.api_keys:
                raise SettingsError(
                    "FANFINITY_API_KEYS: production needs at least one producer API key"
                )
            placeholders = [
                key
                for key in self.api_keys | self.read_api_keys
                if "change-me" in key or key == LOCAL_DEVELOPMENT_KEY
            ]
            if placeholders:
                raise SettingsError(
                    "FANFINITY_API_KEYS: production refuses the local development key and the "
                    "placeholders of the Secret template; generate real keys"
                )


class _EnvReader:
    """Reads one variable at a time and turns any parse failure into a `SettingsError`."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{name}: {exc}") from None


def _non_empty(raw: str) -> str:
    return raw


def _mongodb_url(raw: str) -> str:
    if raw == EMBEDDED_SCHEME or raw.startswith(("mongodb://", "mongodb+srv://")):
        return raw
    raise ValueError(f"expected memory:// or a mongodb:// URL, got {raw.split('://')[0]!r} scheme")


def _db_name(raw: str) -> str:
    if any(char in raw for char in '/\\. "$') or len(raw) > 63:
        raise ValueError(f"{raw!r} is not a valid MongoDB database name")
    return raw


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected {low} to {high}, got {value}")
        return value

    return parse


def _float_between(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected {low:g} to {high:g}, got {value:g}")
        return value

    return parse


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return level


def _key_set(raw: str) -> frozenset[str]:
    keys = [key.strip() for key in raw.split(",") if key.strip()]
    short = [key for key in keys if len(key) < 16]
    if short:
        raise ValueError("every API key must be at least 16 characters long")
    return frozenset(keys)


def _single_key(raw: str) -> str | None:
    if len(raw) < 16:
        raise ValueError("the key must be at least 16 characters long")
    return raw


def _otlp_endpoint(raw: str) -> str | None:
    if not raw.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s):// URL such as http://jaeger:4317, got {raw!r}")
    return raw


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(origin.strip() for origin in raw.split(",") if origin.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"expected http(s) origins or *, got {origin!r}")
    return origins
