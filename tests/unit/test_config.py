"""Settings from the environment: defaults, parsing, and the combinations the service refuses."""

from __future__ import annotations

from typing import Any

import pytest

from fanfinity.config import Environment, Settings, SettingsError

PRODUCER_KEY = "producer-key-0123456789"
READER_KEY = "dashboard-key-0123456789"
MONGODB_URL = "mongodb://mongo-0:27017,mongo-1:27017/?replicaSet=rs0"


def test_no_environment_gives_the_development_defaults() -> None:
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.env is Environment.DEVELOPMENT
    assert settings.mongodb_url == "memory://"
    assert settings.embedded
    assert settings.db_name == "fanfinity"
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.api_keys == frozenset()
    assert settings.read_api_keys == frozenset()
    assert settings.log_level == "INFO"
    assert settings.log_json is False
    assert settings.batch_max_size == 500
    assert settings.batch_linger_ms == 2.0
    assert settings.ingest_queue_max == 20_000
    assert settings.store_timeout_s == 2.0
    assert settings.aggregator_enabled is True
    assert settings.aggregator_batch_size == 1_000
    assert settings.aggregator_stall_s == 30.0
    assert settings.metrics_cache_ms == 250.0
    assert settings.active_window_min == 10.0
    assert settings.shutdown_grace_s == 10.0
    assert settings.cors_origins == ()


def test_blank_variables_mean_the_default() -> None:
    settings = Settings.from_env({"FANFINITY_PORT": "", "FANFINITY_LOG_LEVEL": "   "})

    assert (settings.port, settings.log_level) == (8000, "INFO")


@pytest.mark.parametrize(
    ("variable", "raw", "attribute", "expected"),
    [
        ("FANFINITY_MONGODB_URL", MONGODB_URL, "mongodb_url", MONGODB_URL),
        (
            "FANFINITY_MONGODB_URL",
            "mongodb+srv://cluster0.example.net",
            "mongodb_url",
            "mongodb+srv://cluster0.example.net",
        ),
        ("FANFINITY_DB_NAME", "fanfinity_staging", "db_name", "fanfinity_staging"),
        ("FANFINITY_HOST", "10.1.2.3", "host", "10.1.2.3"),
        ("FANFINITY_PORT", "9000", "port", 9000),
        ("FANFINITY_PORT", " 9001 ", "port", 9001),
        ("FANFINITY_WORKERS", "4", "workers", 4),
        (
            "FANFINITY_API_KEYS",
            f" {PRODUCER_KEY} , {READER_KEY},",
            "api_keys",
            frozenset({PRODUCER_KEY, READER_KEY}),
        ),
        ("FANFINITY_READ_API_KEYS", READER_KEY, "read_api_keys", frozenset({READER_KEY})),
        ("FANFINITY_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("FANFINITY_LOG_JSON", "yes", "log_json", True),
        ("FANFINITY_LOG_JSON", "TRUE", "log_json", True),
        ("FANFINITY_BATCH_MAX_SIZE", "100", "batch_max_size", 100),
        ("FANFINITY_BATCH_LINGER_MS", "5.5", "batch_linger_ms", 5.5),
        ("FANFINITY_BATCH_LINGER_MS", "0", "batch_linger_ms", 0.0),
        ("FANFINITY_INGEST_QUEUE_MAX", "1000", "ingest_queue_max", 1000),
        ("FANFINITY_STORE_TIMEOUT_S", "0.5", "store_timeout_s", 0.5),
        ("FANFINITY_AGGREGATOR", "false", "aggregator_enabled", False),
        ("FANFINITY_AGGREGATOR", "off", "aggregator_enabled", False),
        ("FANFINITY_AGGREGATOR", "0", "aggregator_enabled", False),
        ("FANFINITY_AGGREGATOR_BATCH_SIZE", "250", "aggregator_batch_size", 250),
        ("FANFINITY_AGGREGATOR_STALL_S", "60", "aggregator_stall_s", 60.0),
        ("FANFINITY_METRICS_CACHE_MS", "0", "metrics_cache_ms", 0.0),
        ("FANFINITY_ACTIVE_WINDOW_MIN", "15", "active_window_min", 15.0),
        ("FANFINITY_SHUTDOWN_GRACE_S", "20", "shutdown_grace_s", 20.0),
        (
            "FANFINITY_CORS_ORIGINS",
            "https://dash.example.com, http://localhost:3000",
            "cors_origins",
            ("https://dash.example.com", "http://localhost:3000"),
        ),
        ("FANFINITY_CORS_ORIGINS", "*", "cors_origins", ("*",)),
        ("FANFINITY_BACKLOG", "8192", "backlog", 8192),
    ],
)
def test_each_variable_is_parsed(variable: str, raw: str, attribute: str, expected: Any) -> None:
    # A MongoDB URL so that settings such as several workers are allowed.
    settings = Settings.from_env({"FANFINITY_MONGODB_URL": MONGODB_URL, variable: raw})

    assert getattr(settings, attribute) == expected


def test_production_with_mongodb_and_a_key_is_accepted() -> None:
    settings = Settings.from_env(
        {
            "FANFINITY_ENV": "production",
            "FANFINITY_MONGODB_URL": MONGODB_URL,
            "FANFINITY_API_KEYS": PRODUCER_KEY,
        }
    )

    assert settings.env is Environment.PRODUCTION
    assert not settings.embedded


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("FANFINITY_ENV", "staging"),
        ("FANFINITY_MONGODB_URL", "postgres://db:5432/fanfinity"),
        ("FANFINITY_MONGODB_URL", "memory://elsewhere"),
        ("FANFINITY_DB_NAME", "fan.finity"),
        ("FANFINITY_DB_NAME", "fan finity"),
        ("FANFINITY_DB_NAME", "f" * 64),
        ("FANFINITY_PORT", "eighty"),
        ("FANFINITY_PORT", "0"),
        ("FANFINITY_PORT", "65536"),
        ("FANFINITY_WORKERS", "0"),
        ("FANFINITY_WORKERS", "1.5"),
        ("FANFINITY_API_KEYS", "short"),
        ("FANFINITY_READ_API_KEYS", f"{READER_KEY},tiny"),
        ("FANFINITY_LOG_LEVEL", "verbose"),
        ("FANFINITY_LOG_JSON", "maybe"),
        ("FANFINITY_BATCH_MAX_SIZE", "0"),
        ("FANFINITY_BATCH_MAX_SIZE", "10001"),
        ("FANFINITY_BATCH_LINGER_MS", "-1"),
        ("FANFINITY_BATCH_LINGER_MS", "1001"),
        ("FANFINITY_BATCH_LINGER_MS", "soon"),
        ("FANFINITY_INGEST_QUEUE_MAX", "lots"),
        ("FANFINITY_STORE_TIMEOUT_S", "0.01"),
        ("FANFINITY_STORE_TIMEOUT_S", "nan"),
        ("FANFINITY_AGGREGATOR", "2"),
        ("FANFINITY_AGGREGATOR_BATCH_SIZE", "0"),
        ("FANFINITY_AGGREGATOR_STALL_S", "0.5"),
        ("FANFINITY_METRICS_CACHE_MS", "5001"),
        ("FANFINITY_ACTIVE_WINDOW_MIN", "0"),
        ("FANFINITY_SHUTDOWN_GRACE_S", "inf"),
        ("FANFINITY_CORS_ORIGINS", "ftp://files.example.com"),
    ],
)
def test_bad_value_is_refused_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"FANFINITY_MONGODB_URL": MONGODB_URL, variable: raw})

    assert str(refused.value).startswith(f"{variable}: ")


def test_bad_value_message_does_not_echo_api_keys() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"FANFINITY_API_KEYS": f"{PRODUCER_KEY},tiny-secret"})

    assert PRODUCER_KEY not in str(refused.value)
    assert "tiny-secret" not in str(refused.value)


def test_api_key_of_sixteen_characters_is_long_enough() -> None:
    settings = Settings.from_env({"FANFINITY_API_KEYS": "k" * 16})

    assert settings.api_keys == frozenset({"k" * 16})


def test_api_key_of_fifteen_characters_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^FANFINITY_API_KEYS: "):
        Settings.from_env({"FANFINITY_API_KEYS": "k" * 15})


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"FANFINITY_API_KEYS": PRODUCER_KEY}, id="default-url"),
        pytest.param(
            {"FANFINITY_API_KEYS": PRODUCER_KEY, "FANFINITY_MONGODB_URL": "memory://"},
            id="explicit-memory",
        ),
    ],
)
def test_production_refuses_the_embedded_engine(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=r"^FANFINITY_MONGODB_URL: "):
        Settings.from_env({"FANFINITY_ENV": "production", **environ})


@pytest.mark.parametrize("keys", [None, "", " , "])
def test_production_refuses_to_run_without_api_keys(keys: str | None) -> None:
    environ = {"FANFINITY_ENV": "production", "FANFINITY_MONGODB_URL": MONGODB_URL}
    if keys is not None:
        environ["FANFINITY_API_KEYS"] = keys

    with pytest.raises(SettingsError, match=r"^FANFINITY_API_KEYS: "):
        Settings.from_env(environ)


def test_embedded_engine_refuses_several_workers() -> None:
    with pytest.raises(SettingsError, match=r"^FANFINITY_WORKERS: "):
        Settings.from_env({"FANFINITY_WORKERS": "2"})


def test_settings_built_in_code_are_checked_the_same_way() -> None:
    with pytest.raises(SettingsError, match=r"^FANFINITY_WORKERS: "):
        Settings(workers=2).check_consistency()
    with pytest.raises(SettingsError, match=r"^FANFINITY_MONGODB_URL: "):
        Settings(env=Environment.PRODUCTION, api_keys=frozenset({PRODUCER_KEY})).check_consistency()
