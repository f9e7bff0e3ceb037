"""Tests for bridge/config/__init__.py: defaults, file, environment, validation messages, masking.

Every test runs in an empty temporary working directory with no BRIDGE_*, ANTHROPIC_*,
OPENAI_* or COPILOT_* variables in os.environ; most pass their environment explicitly anyway.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import (
    PROVIDER_TYPES,
    SECONDS,
    AuthConfig,
    BreakerConfig,
    Config,
    ConfigError,
    MCPConfig,
    MCPServerConfig,
    MiB,
    ProviderConfig,
    RecordingConfig,
    ServerConfig,
    config_from_mapping,
    default_config_path,
    load_config,
    mask_secret,
    mask_url,
    mask_urls_in,
    missing_key_warnings,
    render_config,
)

SECRET = "sk-ant-api03-very-secret-value-0123"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("BRIDGE_", "ANTHROPIC_", "OPENAI_", "COPILOT_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def exactly(message: str) -> str:
    """An anchored pattern matching ``message`` and nothing else."""
    return rf"^{re.escape(message)}$"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- Defaults, file, environment -------------------------------------------------------------


def test_defaults_without_file_or_environment() -> None:
    config = load_config(environ={})
    assert config.server == ServerConfig(
        host="127.0.0.1",
        port=8080,
        max_body_bytes=32 * MiB,
        grace_period=30 * SECONDS,
        backlog=1024,
        ping_interval=10 * SECONDS,
    )
    assert config.auth == AuthConfig(mode="keys", header="X-Bridge-User", admin_key="")
    assert config.recording == RecordingConfig(
        database="sqlite:///bridge.db", queue_size=10_000, batch_size=512
    )
    assert config.providers == (
        ProviderConfig(
            name="anthropic",
            type="anthropic",
            base_url="https://api.anthropic.com/",
            key="",
            connect_timeout=10.0,
        ),
        ProviderConfig(name="openai", type="openai", base_url="https://api.openai.com/v1/"),
        ProviderConfig(
            name="copilot", type="copilot", base_url="https://api.individual.githubcopilot.com/"
        ),
    )
    assert [p.route_prefix for p in config.providers] == ["/anthropic", "/openai/v1", "/copilot"]


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path / "custom.toml",
        """
        [server]
        host = "0.0.0.0"
        port = 9000
        max_body_bytes = 2048
        grace_period = 5
        backlog = 16
        ping_interval = 2.5

        [auth]
        mode = "header"
        header = "X-Forwarded-User"

        [recording]
        database = "memory://"
        queue_size = 10
        batch_size = 2

        [providers]
        defaults = false

        [providers.anthropic-work]
        type = "anthropic"
        base_url = "http://127.0.0.1:9/v1"
        key = "work-key"
        connect_timeout = 3
        """,
    )
    config = load_config(path, environ={})
    assert config == Config(
        server=ServerConfig(
            host="0.0.0.0",
            port=9000,
            max_body_bytes=2048,
            grace_period=5.0,
            backlog=16,
            ping_interval=2.5,
        ),
        auth=AuthConfig(mode="header", header="X-Forwarded-User"),
        recording=RecordingConfig(database="memory://", queue_size=10, batch_size=2),
        providers=(
            ProviderConfig(
                name="anthropic-work",
                type="anthropic",
                base_url="http://127.0.0.1:9/v1/",
                key="work-key",
                connect_timeout=3.0,
            ),
        ),
    )


def test_connection_settings_default_and_override() -> None:
    """HTTP/1.1 only unless asked; every connection has an idle and a header deadline."""
    defaults = load_config(environ={}).server
    assert (defaults.http2, defaults.keep_alive_timeout, defaults.header_timeout) == (
        False,
        75.0,
        10.0,
    )
    environ = {
        "BRIDGE_SERVER_HTTP2": "true",
        "BRIDGE_SERVER_KEEP_ALIVE_TIMEOUT": "5",
        "BRIDGE_SERVER_HEADER_TIMEOUT": "2.5",
    }
    server = config_from_mapping({}, environ).server
    assert (server.http2, server.keep_alive_timeout, server.header_timeout) == (True, 5.0, 2.5)


def test_integer_seconds_become_floats() -> None:
    config = config_from_mapping({"server": {"grace_period": 5}}, {})
    assert isinstance(config.server.grace_period, float)


def test_environment_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bridge.toml",
        '[server]\nport = 9000\nhost = "0.0.0.0"\n[auth]\nmode = "none"\n',
    )
    environ = {
        "BRIDGE_SERVER_PORT": "9100",
        "BRIDGE_SERVER_GRACE_PERIOD": "1.5",
        "BRIDGE_AUTH_MODE": "header",
        "BRIDGE_AUTH_HEADER": "X-User",
        "BRIDGE_RECORDING_DATABASE": "sqlite:////var/lib/bridge/bridge.db",
        "BRIDGE_RECORDING_BATCH_SIZE": "64",
    }
    config = load_config(path, environ)
    assert config.server.port == 9100
    assert config.server.host == "0.0.0.0"  # from the file: no override
    assert config.server.grace_period == 1.5
    assert config.auth == AuthConfig(mode="header", header="X-User")
    assert config.recording.database == "sqlite:////var/lib/bridge/bridge.db"
    assert config.recording.batch_size == 64


def test_empty_environment_variable_counts_as_unset() -> None:
    config = config_from_mapping({"server": {"port": 9000}}, {"BRIDGE_SERVER_PORT": ""})
    assert config.server.port == 9000


def test_load_config_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SERVER_PORT", "0")
    assert load_config().server.port == 0


def test_other_bridge_variables_are_ignored() -> None:
    environ = {"BRIDGE_CONFIG": "", "BRIDGE_DUMP_DIR": "/tmp/dumps", "BRIDGE_PROVIDERS_X": "1"}
    assert config_from_mapping({}, environ) == config_from_mapping({}, {})


def test_bridge_toml_in_the_working_directory_is_found() -> None:
    assert default_config_path({}) is None
    write(Path("bridge.toml"), "[server]\nport = 9001\n")
    assert default_config_path({}) == Path("bridge.toml")
    assert load_config(environ={}).server.port == 9001


def test_bridge_config_variable_names_the_file(tmp_path: Path) -> None:
    write(Path("bridge.toml"), "[server]\nport = 9001\n")
    other = write(tmp_path / "other.toml", "[server]\nport = 9002\n")
    environ = {"BRIDGE_CONFIG": str(other)}
    assert default_config_path(environ) == other
    assert load_config(environ=environ).server.port == 9002


def test_an_explicit_path_beats_bridge_config(tmp_path: Path) -> None:
    chosen = write(tmp_path / "chosen.toml", "[server]\nport = 9003\n")
    environ = {"BRIDGE_CONFIG": str(tmp_path / "missing.toml")}
    assert load_config(chosen, environ).server.port == 9003


def test_a_missing_named_file_is_an_error_not_the_defaults() -> None:
    with pytest.raises(
        ConfigError,
        match=exactly("cannot read config file missing.toml: No such file or directory"),
    ):
        load_config(environ={"BRIDGE_CONFIG": "missing.toml"})


def test_invalid_toml_names_the_file() -> None:
    write(Path("bridge.toml"), "[server\n")
    with pytest.raises(ConfigError, match=r"^bridge\.toml is not valid TOML: .+ \(at line 1, "):
        load_config(environ={})


# --- Validation messages ---------------------------------------------------------------------

MAPPING_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"server": {"port": "abc"}}, "server.port must be an integer from 0 to 65535, got 'abc'"),
    ({"server": {"port": 65536}}, "server.port must be an integer from 0 to 65535, got 65536"),
    ({"server": {"port": True}}, "server.port must be an integer from 0 to 65535, got true"),
    ({"server": {"host": ""}}, "server.host must be a host name or IP address, got ''"),
    (
        {"server": {"max_body_bytes": 1023}},
        "server.max_body_bytes must be an integer >= 1024, got 1023",
    ),
    (
        {"server": {"grace_period": -1}},
        "server.grace_period must be a number of seconds >= 0, got -1",
    ),
    (
        {"server": {"grace_period": float("inf")}},
        "server.grace_period must be a number of seconds >= 0, got inf",
    ),
    ({"server": {"backlog": 0}}, "server.backlog must be an integer >= 1, got 0"),
    (
        {"server": {"ping_interval": 0}},
        "server.ping_interval must be a number of seconds > 0, got 0",
    ),
    (
        {"server": {"keep_alive_timeout": 0}},
        "server.keep_alive_timeout must be a number of seconds > 0, got 0",
    ),
    (
        {"server": {"header_timeout": "soon"}},
        "server.header_timeout must be a number of seconds > 0, got 'soon'",
    ),
    ({"server": {"http2": "yes"}}, "server.http2 must be true or false, got 'yes'"),
    ({"auth": {"mode": "basic"}}, "auth.mode must be 'keys', 'header' or 'none', got 'basic'"),
    (
        {"auth": {"header": "X User"}},
        "auth.header must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~),"
        " got 'X User'",
    ),
    (
        {"recording": {"database": "mysql://u:hunter2@db/bridge"}},
        "recording.database must be a URL starting with sqlite://, memory://, postgresql:// or"
        " postgres://,"
        " got 'mysql://u:***@db/bridge'",
    ),
    (
        {"recording": {"database": "sqlite://"}},
        "recording.database must be sqlite:///relative/path or sqlite:////absolute/path,"
        " got 'sqlite://'",
    ),
    ({"recording": {"queue_size": 0}}, "recording.queue_size must be an integer >= 1, got 0"),
    ({"recording": {"batch_size": 0}}, "recording.batch_size must be an integer >= 1, got 0"),
    ({"server": 8080}, "server must be a table, got 8080"),
    ({"providers": {"anthropic": "x"}}, "providers.anthropic must be a table, got 'x'"),
    (
        {"providers": {"Foo": {"type": "anthropic"}}},
        "invalid provider name 'Foo': use lower-case letters, digits and single hyphens,"
        " e.g. 'anthropic' or 'copilot-business'",
    ),
    (
        {"providers": {"a--b": {"type": "anthropic"}}},
        "invalid provider name 'a--b': use lower-case letters, digits and single hyphens,"
        " e.g. 'anthropic' or 'copilot-business'",
    ),
    (
        {"providers": {"work": {}}},
        "providers.work needs a type, because 'work' is not a provider type;"
        " add type = 'anthropic'",
    ),
    (
        {"providers": {"work": {"type": "gemini"}}},
        "providers.work.type must be 'anthropic', 'openai' or 'copilot', got 'gemini'",
    ),
    (
        {"providers": {"anthropic": {"base_url": "ftp://example.com"}}},
        "providers.anthropic.base_url must be an http:// or https:// URL with a host and no"
        " query or fragment, got 'ftp://example.com'",
    ),
    (
        {"providers": {"anthropic": {"base_url": "https://u:hunter2@example.com/?q=1"}}},
        "providers.anthropic.base_url must be an http:// or https:// URL with a host and no"
        " query or fragment, got 'https://u:***@example.com/?q=1'",
    ),
    (
        {"providers": {"anthropic": {"connect_timeout": 0}}},
        "providers.anthropic.connect_timeout must be a number of seconds > 0, got 0",
    ),
    (
        {"providers": {"anthropic": {"response_timeout": 0}}},
        "providers.anthropic.response_timeout must be a number of seconds > 0, got 0",
    ),
    (
        {"providers": {"anthropic": {"stream_idle_timeout": -1}}},
        "providers.anthropic.stream_idle_timeout must be a number of seconds > 0, got -1",
    ),
    (
        {"providers": {"anthropic": {"key": 12345678901234567890}}},
        "providers.anthropic.key must be a string, got a value of type int",
    ),
    (
        {"providers": {"anthropic": {"keys": "sk-one"}}},
        "providers.anthropic.keys must be a list of strings, got a value of type str",
    ),
    (
        {"providers": {"anthropic": {"keys": ["sk-one", 12345678901234567890]}}},
        "providers.anthropic.keys must be a list of strings, got a value of type int at position 1",
    ),
    (
        {"providers": {"anthropic": {"max_retries": 11}}},
        "providers.anthropic.max_retries must be an integer from 0 to 10, got 11",
    ),
    (
        {"providers": {"anthropic": {"max_retries": -1}}},
        "providers.anthropic.max_retries must be an integer from 0 to 10, got -1",
    ),
    (
        {"providers": {"anthropic": {"max_retries": 2.5}}},
        "providers.anthropic.max_retries must be an integer from 0 to 10, got 2.5",
    ),
    (
        {"server": {"body_timeout": 0}},
        "server.body_timeout must be a number of seconds > 0, got 0",
    ),
    (
        {"server": {"max_buffered_bytes": 4096}},
        "server.max_buffered_bytes (4096) is below server.max_body_bytes (33554432), so a body"
        " of the allowed size could never be taken: raise max_buffered_bytes or lower"
        " max_body_bytes",
    ),
    (
        {"server": {"trusted_proxies": "10.0.0.0/8"}},
        "server.trusted_proxies must be a list of IP addresses or CIDR networks, e.g."
        " ['10.0.0.0/8', '127.0.0.1'], got '10.0.0.0/8'",
    ),
    (
        {"server": {"trusted_proxies": ["10.0.0.0/33"]}},
        "server.trusted_proxies must be a list of IP addresses or CIDR networks, e.g."
        " ['10.0.0.0/8', '127.0.0.1'], got '10.0.0.0/33'",
    ),
    (
        {"auth": {"failure_rate": -1}},
        "auth.failure_rate must be a number of events per second >= 0 (0 turns the limit off),"
        " got -1",
    ),
    (
        {"auth": {"failure_burst": 0}},
        "auth.failure_burst must be an integer >= 1, got 0",
    ),
    (
        {"providers": {"anthropic": {"key_cooldown": 0}}},
        "providers.anthropic.key_cooldown must be a number of seconds > 0, got 0",
    ),
    (
        {"providers": {"anthropic": {"circuit_breaker": 5}}},
        "providers.anthropic.circuit_breaker must be a table, got 5",
    ),
    (
        {"providers": {"anthropic": {"circuit_breaker": {"failure_threshold": 0}}}},
        "providers.anthropic.circuit_breaker.failure_threshold must be an integer >= 1, got 0",
    ),
    (
        {"providers": {"anthropic": {"circuit_breaker": {"interval": -1}}}},
        "providers.anthropic.circuit_breaker.interval must be a number of seconds >= 0, got -1",
    ),
    (
        {"providers": {"anthropic": {"circuit_breaker": {"timeout": 0}}}},
        "providers.anthropic.circuit_breaker.timeout must be a number of seconds > 0, got 0",
    ),
    (
        {"providers": {"anthropic": {"circuit_breaker": {"max_requests": 0}}}},
        "providers.anthropic.circuit_breaker.max_requests must be an integer >= 1, got 0",
    ),
    (
        {"providers": {"anthropic": {"circuit_breaker": {"failure_statuses": [503, 600]}}}},
        "providers.anthropic.circuit_breaker.failure_statuses must be a list of HTTP error"
        " statuses from 400 to 599, got [503, 600]",
    ),
    (
        {"providers": {"anthropic": {"circuit_breaker": {"failure_statuses": 503}}}},
        "providers.anthropic.circuit_breaker.failure_statuses must be a list of HTTP error"
        " statuses from 400 to 599, got 503",
    ),
    (
        {"providers": {"anthropic": {"circuit_breaker": {"failure_statuses": [True]}}}},
        "providers.anthropic.circuit_breaker.failure_statuses must be a list of HTTP error"
        " statuses from 400 to 599, got [True]",
    ),
    (
        {"providers": {"openai": {"passthrough_writes": "yes"}}},
        "providers.openai.passthrough_writes must be true or false, got 'yes'",
    ),
]


@pytest.mark.parametrize(("data", "message"), MAPPING_ERRORS)
def test_invalid_values_are_rejected_with_the_rule(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=exactly(message)):
        config_from_mapping(data, {})


ENVIRONMENT_ERRORS: list[tuple[str, str, str]] = [
    (
        "BRIDGE_SERVER_PORT",
        "abc",
        "BRIDGE_SERVER_PORT must be an integer from 0 to 65535, got 'abc'",
    ),
    (
        "BRIDGE_SERVER_PORT",
        "70000",
        "BRIDGE_SERVER_PORT must be an integer from 0 to 65535, got 70000",
    ),
    (
        "BRIDGE_SERVER_PING_INTERVAL",
        "soon",
        "BRIDGE_SERVER_PING_INTERVAL must be a number of seconds > 0, got 'soon'",
    ),
    (
        "BRIDGE_SERVER_GRACE_PERIOD",
        "nan",
        "BRIDGE_SERVER_GRACE_PERIOD must be a number of seconds >= 0, got nan",
    ),
    (
        "BRIDGE_AUTH_MODE",
        "oauth",
        "BRIDGE_AUTH_MODE must be 'keys', 'header' or 'none', got 'oauth'",
    ),
    (
        "BRIDGE_RECORDING_DATABASE",
        "mysql://bob:hunter2@db/bridge",
        "BRIDGE_RECORDING_DATABASE must be a URL starting with sqlite://, memory://,"
        " postgresql:// or postgres://, got 'mysql://bob:***@db/bridge'",
    ),
    (
        "ANTHROPIC_BASE_URL",
        "api.anthropic.com",
        "ANTHROPIC_BASE_URL must be an http:// or https:// URL with a host and no query or"
        " fragment, got 'api.anthropic.com'",
    ),
]


def test_intake_limits_have_defaults_and_environment_overrides() -> None:
    defaults = load_config(environ={})
    assert (defaults.server.body_timeout, defaults.server.max_buffered_bytes) == (60.0, 256 * MiB)
    assert defaults.server.trusted_proxies == ()
    assert (defaults.auth.failure_rate, defaults.auth.failure_burst) == (10.0, 20)
    config = config_from_mapping(
        {},
        {
            "BRIDGE_SERVER_BODY_TIMEOUT": "5",
            "BRIDGE_SERVER_MAX_BUFFERED_BYTES": str(64 * MiB),
            "BRIDGE_SERVER_TRUSTED_PROXIES": "10.1.2.3/8, ::1",
            "BRIDGE_AUTH_FAILURE_RATE": "0",
            "BRIDGE_AUTH_FAILURE_BURST": "5",
        },
    )
    assert (config.server.body_timeout, config.server.max_buffered_bytes) == (5.0, 64 * MiB)
    assert config.server.trusted_proxies == ("10.0.0.0/8", "::1/128")  # normalised networks
    assert (config.auth.failure_rate, config.auth.failure_burst) == (0.0, 5)


@pytest.mark.parametrize(("name", "value", "message"), ENVIRONMENT_ERRORS)
def test_invalid_environment_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=exactly(message)):
        config_from_mapping({}, {name: value})


def test_messages_name_the_file_when_loading_one() -> None:
    write(Path("bridge.toml"), '[server]\nport = "abc"\n')
    with pytest.raises(
        ConfigError,
        match=exactly("server.port in bridge.toml must be an integer from 0 to 65535, got 'abc'"),
    ):
        load_config(environ={})


def test_invalid_provider_name_in_a_file_names_the_file() -> None:
    write(Path("bridge.toml"), '[providers.Foo]\ntype = "anthropic"\n')
    with pytest.raises(
        ConfigError,
        match=exactly(
            "invalid provider name 'Foo' in bridge.toml: use lower-case letters, digits and"
            " single hyphens, e.g. 'anthropic' or 'copilot-business'"
        ),
    ):
        load_config(environ={})


# --- Unknown names: did you mean -------------------------------------------------------------

UNKNOWN_NAMES: list[tuple[dict[str, Any], dict[str, str], str]] = [
    (
        {"recording": {"databse": "memory://"}},
        {},
        "unknown key 'recording.databse' in bridge.toml; did you mean 'recording.database'?",
    ),
    (
        {"server": {"database": "memory://"}},
        {},
        "unknown key 'server.database' in bridge.toml; did you mean 'recording.database'?",
    ),
    (
        {"server": {"colour": "blue"}},
        {},
        "unknown key 'server.colour' in bridge.toml; expected one of 'server.host',"
        " 'server.port', 'server.max_body_bytes', 'server.grace_period', 'server.backlog',"
        " 'server.ping_interval', 'server.workers',"
        " 'server.client_write_timeout', 'server.keep_alive_timeout', 'server.header_timeout',"
        " 'server.http2', 'server.body_timeout', 'server.max_buffered_bytes',"
        " 'server.trusted_proxies'",
    ),
    ({"sever": {}}, {}, "unknown section 'sever' in bridge.toml; did you mean 'server'?"),
    ({"port": 8080}, {}, "unknown key 'port' in bridge.toml; did you mean 'server.port'?"),
    (
        {"logging": {}},
        {},
        "unknown section 'logging' in bridge.toml; expected one of 'server', 'auth',"
        " 'recording', 'mcp',"
        " 'observability', 'providers'",
    ),
    (
        {"providers": {"anthropic": {"bsae_url": "http://x/"}}},
        {},
        "unknown key 'providers.anthropic.bsae_url' in bridge.toml;"
        " did you mean 'providers.anthropic.base_url'?",
    ),
    (
        {"providers": {"anthropic": {"circuit_braker": {}}}},
        {},
        "unknown key 'providers.anthropic.circuit_braker' in bridge.toml;"
        " did you mean 'providers.anthropic.circuit_breaker'?",
    ),
    (
        {"providers": {"anthropic": {"circuit_breaker": {"treshold": 3}}}},
        {},
        "unknown key 'providers.anthropic.circuit_breaker.treshold' in bridge.toml;"
        " did you mean 'providers.anthropic.circuit_breaker.failure_threshold'?",
    ),
    (
        {},
        {"BRIDGE_SERVER_PROT": "1"},
        "unknown environment variable 'BRIDGE_SERVER_PROT'; did you mean 'BRIDGE_SERVER_PORT'?",
    ),
    (
        {},
        {"bridge_server_port": "1"},
        "unknown environment variable 'bridge_server_port'; did you mean 'BRIDGE_SERVER_PORT'?",
    ),
    (
        {},
        {"BRIDGE_AUTH_DATABASE": "memory://"},
        "unknown environment variable 'BRIDGE_AUTH_DATABASE';"
        " did you mean 'BRIDGE_RECORDING_DATABASE'?",
    ),
    (
        {},
        {"BRIDGE_AUTH_X": "1"},
        "unknown environment variable 'BRIDGE_AUTH_X'; expected one of 'BRIDGE_AUTH_MODE',"
        " 'BRIDGE_AUTH_HEADER', 'BRIDGE_AUTH_ADMIN_KEY', 'BRIDGE_AUTH_FAILURE_RATE',"
        " 'BRIDGE_AUTH_FAILURE_BURST'",
    ),
]


@pytest.mark.parametrize(("data", "environ", "message"), UNKNOWN_NAMES)
def test_unknown_names_are_rejected_with_a_suggestion(
    data: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=exactly(message)):
        config_from_mapping(data, environ, source="bridge.toml")


# --- Providers -------------------------------------------------------------------------------


def test_anthropic_key_and_base_url_come_from_the_sdk_variables() -> None:
    environ = {
        "ANTHROPIC_API_KEY": SECRET,
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "OPENAI_API_KEY": "sk-openai-" + SECRET,
        "OPENAI_BASE_URL": "http://127.0.0.1:10/v1",
    }
    anthropic, openai, copilot = config_from_mapping({}, environ).providers
    assert (anthropic.key, anthropic.base_url) == (SECRET, "http://127.0.0.1:9/")
    assert (openai.key, openai.base_url) == ("sk-openai-" + SECRET, "http://127.0.0.1:10/v1/")
    assert copilot.key == ""


def test_empty_file_values_fall_back_to_the_sdk_variables() -> None:
    data = {"providers": {"anthropic": {"key": "", "base_url": ""}}}
    environ = {"ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_BASE_URL": "http://env/"}
    provider = config_from_mapping(data, environ).provider("anthropic")
    assert (provider.key, provider.base_url) == (SECRET, "http://env/")


def test_sdk_variables_feed_only_the_provider_named_like_its_type() -> None:
    data = {"providers": {"anthropic-work": {"type": "anthropic", "base_url": "http://work/"}}}
    environ = {"ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_BASE_URL": "http://env/"}
    provider = config_from_mapping(data, environ).provider("anthropic-work")
    assert (provider.key, provider.base_url) == ("", "http://work/")


def test_provider_type_defaults_to_its_name() -> None:
    provider = config_from_mapping({"providers": {"anthropic": {}}}, {}).provider("anthropic")
    assert provider.type == "anthropic"
    assert provider.route_prefix == "/anthropic"


def test_defaults_false_and_no_provider_means_no_providers() -> None:
    assert config_from_mapping({"providers": {"defaults": False}}, {}).providers == ()


def test_providers_keep_the_file_order() -> None:
    data = {
        "providers": {
            "defaults": False,
            "b": {"type": "anthropic", "base_url": "http://b/"},
            "a": {"type": "anthropic", "base_url": "http://a/"},
        }
    }
    assert [p.name for p in config_from_mapping(data, {}).providers] == ["b", "a"]


def test_provider_lookup_by_name() -> None:
    config = config_from_mapping({}, {})
    assert config.provider("anthropic") is config.providers[0]
    with pytest.raises(
        ConfigError, match=exactly("unknown provider 'antropic'; did you mean 'anthropic'?")
    ):
        config.provider("antropic")
    with pytest.raises(
        ConfigError, match=exactly("unknown provider 'x'; no providers are configured")
    ):
        Config().provider("x")


def test_resilience_settings_are_read_from_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bridge.toml",
        """
        [providers.anthropic]
        key = "key-one"
        keys = ["key-two", "", "key-three"]
        max_retries = 0
        key_cooldown = 5
        [providers.anthropic.circuit_breaker]
        failure_threshold = 2
        interval = 0
        timeout = 1.5
        max_requests = 1
        failure_statuses = [429, 503]
        [providers.openai]
        """,
    )
    anthropic, openai, _ = load_config(path, environ={}).providers
    assert anthropic == ProviderConfig(
        name="anthropic",
        type="anthropic",
        key="key-one",
        keys=("key-two", "", "key-three"),
        max_retries=0,
        key_cooldown=5.0,
        circuit_breaker=BreakerConfig(
            failure_threshold=2,
            interval=0.0,
            timeout=1.5,
            max_requests=1,
            failure_statuses=(429, 503),
        ),
    )
    assert anthropic.all_keys == ("key-one", "key-two", "key-three")
    assert (openai.keys, openai.max_retries, openai.key_cooldown) == ((), 2, 60.0)
    # Generous stall timeouts: a blocking answer may come only after minutes of thinking.
    assert (openai.response_timeout, openai.stream_idle_timeout) == (600.0, 300.0)
    assert openai.circuit_breaker is None  # the breaker is opt-in


def test_passthrough_writes_are_off_unless_a_provider_turns_them_on(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bridge.toml",
        """
        [providers.openai]
        passthrough_writes = true
        [providers.anthropic]
        """,
    )
    config = load_config(path, environ={})
    openai, anthropic = config.provider("openai"), config.provider("anthropic")
    assert (openai.passthrough_writes, anthropic.passthrough_writes) == (True, False)
    rendered = render_config(config)
    assert any(line.startswith("passthrough_writes = true") for line in rendered.splitlines())
    assert config_from_mapping(tomllib.loads(rendered), {}).providers == config.providers


def test_an_empty_breaker_table_enables_the_reference_defaults() -> None:
    data: dict[str, Any] = {"providers": {"anthropic": {"circuit_breaker": {}}}}
    provider = config_from_mapping(data, {}).provider("anthropic")
    assert provider.circuit_breaker == BreakerConfig(
        failure_threshold=5,
        interval=10.0,
        timeout=30.0,
        max_requests=3,
        failure_statuses=(503, 504, 529),
    )


def test_all_keys_drops_empty_and_repeated_keys() -> None:
    provider = ProviderConfig(name="anthropic", type="anthropic", keys=("k1", "", "k2", "k1"))
    assert provider.all_keys == ("k1", "k2")
    assert ProviderConfig(name="anthropic", type="anthropic").all_keys == ()


@pytest.mark.parametrize(
    ("variable", "provider"),
    [
        ("ANTHROPIC_MAX_RETRIES", "anthropic"),
        ("OPENAI_MAX_RETRIES", "openai"),
        ("COPILOT_MAX_RETRIES", "copilot"),
    ],
)
def test_max_retries_comes_from_the_sdk_variable(variable: str, provider: str) -> None:
    config = config_from_mapping({}, {variable: "5"})
    assert {p.name: p.max_retries for p in config.providers} == {
        name: 5 if name == provider else 2 for name in ("anthropic", "openai", "copilot")
    }


def test_max_retries_variable_feeds_only_the_provider_named_like_its_type() -> None:
    data = {"providers": {"anthropic-work": {"type": "anthropic", "base_url": "http://work/"}}}
    config = config_from_mapping(data, {"ANTHROPIC_MAX_RETRIES": "7"})
    assert config.provider("anthropic-work").max_retries == 2


@pytest.mark.parametrize(("value", "shown"), [("many", "'many'"), ("11", "11"), ("1.5", "'1.5'")])
def test_invalid_max_retries_variable_is_named(value: str, shown: str) -> None:
    with pytest.raises(
        ConfigError,
        match=exactly(f"OPENAI_MAX_RETRIES must be an integer from 0 to 10, got {shown}"),
    ):
        config_from_mapping({}, {"OPENAI_MAX_RETRIES": value})


# --- Direct construction (embedding) ---------------------------------------------------------


def test_direct_construction_for_embedding() -> None:
    provider = ProviderConfig(name="anthropic", type="anthropic", base_url="http://127.0.0.1:9")
    config = Config(providers=(provider,))
    assert config.providers[0].base_url == "http://127.0.0.1:9/"
    assert config.server == ServerConfig()
    assert ProviderConfig(name="anthropic", type="anthropic").base_url == (
        "https://api.anthropic.com/"
    )


def test_direct_construction_is_validated_like_the_file() -> None:
    with pytest.raises(
        ConfigError, match=exactly("server.port must be an integer from 0 to 65535, got 70000")
    ):
        ServerConfig(port=70000)
    with pytest.raises(
        ConfigError, match=exactly("auth.mode must be 'keys', 'header' or 'none', got ''")
    ):
        AuthConfig(mode="")
    with pytest.raises(ConfigError, match=r"^invalid provider name 'Anthropic': "):
        ProviderConfig(name="Anthropic", type="anthropic")


def test_direct_construction_validates_resilience_settings() -> None:
    with pytest.raises(
        ConfigError, match=exactly("circuit_breaker.timeout must be a number of seconds > 0, got 0")
    ):
        BreakerConfig(timeout=0)
    with pytest.raises(
        ConfigError,
        match=exactly("providers.anthropic.max_retries must be an integer from 0 to 10, got 20"),
    ):
        ProviderConfig(name="anthropic", type="anthropic", max_retries=20)
    with pytest.raises(
        ConfigError,
        match=exactly(
            "providers.anthropic.circuit_breaker must be a BreakerConfig or None, got {}"
        ),
    ):
        ProviderConfig(name="anthropic", type="anthropic", circuit_breaker={})  # type: ignore[arg-type]
    provider = ProviderConfig(name="anthropic", type="anthropic", keys=["k"])  # type: ignore[arg-type]
    assert provider.keys == ("k",)
    assert BreakerConfig(failure_statuses=[429]).failure_statuses == (429,)  # type: ignore[arg-type]


def test_direct_construction_never_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    assert ProviderConfig(name="anthropic", type="anthropic").key == ""


def test_duplicate_provider_names_are_rejected() -> None:
    provider = ProviderConfig(name="anthropic", type="anthropic")
    with pytest.raises(
        ConfigError,
        match=exactly(
            "duplicate provider name 'anthropic': each provider needs its own name, which is"
            " also its route prefix '/anthropic'"
        ),
    ):
        Config(providers=(provider, provider))


def test_a_providers_list_becomes_a_tuple() -> None:
    provider = ProviderConfig(name="anthropic", type="anthropic")
    config = Config(providers=[provider])  # type: ignore[arg-type]
    assert config.providers == (provider,)


# --- Secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "masked"),
    [
        ("", ""),
        ("a", "..."),
        ("abcd", "..."),
        ("abcde", "a...e"),
        ("test-key", "t...y"),
        ("abcdefghi", "a...i"),
        ("user-api-key", "us...ey"),
        ("0123456789", "01...89"),
        ("0123456789012345678", "01...78"),
        ("sk-ant-api03-abcdefgh", "sk-a...efgh"),
        ("01234567890123456789", "0123...6789"),
    ],
)
def test_mask_secret_follows_the_reference(secret: str, masked: str) -> None:
    assert mask_secret(secret) == masked


@given(st.text())
def test_mask_secret_reveals_at_most_eight_characters(secret: str) -> None:
    masked = mask_secret(secret)
    assert len(masked.replace("...", "", 1)) <= min(8, len(secret) // 2)
    assert (masked == "") == (secret == "")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_both_postgresql_schemes_are_accepted(scheme: str) -> None:
    """libpq, and so open_store, take both spellings: configuration must not refuse one."""
    url = f"{scheme}://bob:hunter2@db:5432/bridge"
    from_file = config_from_mapping({"recording": {"database": url}}, {})
    from_env = config_from_mapping({}, {"BRIDGE_RECORDING_DATABASE": url})
    assert from_file.recording.database == from_env.recording.database == url
    assert "hunter2" not in render_config(from_file)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://bob:hunter2@db:5432/bridge", "postgresql://bob:***@db:5432/bridge"),
        ("postgresql://bob:p@ss/w0rd@db/bridge", "postgresql://bob:***@db/bridge"),
        ("postgresql://bob@db/bridge", "postgresql://bob@db/bridge"),
        ("sqlite:///bridge.db", "sqlite:///bridge.db"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "http://user:pw@mcp.local:8080/mcp?token=s3cr3t-value",
            "http://user:***@mcp.local:8080/mcp?token=***",
        ),
        (
            "https://mcp.example/sse?transport=sse&api_key=s3cr3t-value&x=1",
            "https://mcp.example/sse?transport=sse&api_key=***&x=1",
        ),
        (
            "https://b.example/o?X-Amz-Signature=s3cr3t-value&X-Amz-Credential=s3cr3t-value",
            "https://b.example/o?X-Amz-Signature=***&X-Amz-Credential=***",
        ),
        ("https://a.example/cb?code=s3cr3t-value&state=1", "https://a.example/cb?code=***&state=1"),
        ("https://a.example/cb#access_token=s3cr3t-value", "https://a.example/cb#access_token=***"),
        ("https://a.example/x?Auth=s3cr3t-value", "https://a.example/x?Auth=***"),
        ("https://a.example/x?sig=s3cr3t-value", "https://a.example/x?sig=***"),
        ("https://a.example/x?secret=s3cr3t@value", "https://a.example/x?secret=***"),
        ("https://a.example/mcp?region=eu", "https://a.example/mcp?region=eu"),
    ],
)
def test_mask_url_hides_credentials_in_the_query(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_urls_in_masks_every_url_of_a_text() -> None:
    text = (
        "Client error '401' for url 'http://u:pw-hunter2@h/mcp?token=s3cr3t-value'"
        " (via https://h2/x?key=s3cr3t-value)"
    )
    masked = mask_urls_in(text)
    assert masked == (
        "Client error '401' for url 'http://u:***@h/mcp?token=***' (via https://h2/x?key=***)"
    )


def test_check_config_masks_an_mcp_server_url() -> None:
    url = "https://user:pw-hunter2@mcp.example/mcp?token=s3cr3t-value"
    config = config_from_mapping({"mcp": {"servers": {"tools": {"url": url}}}}, {})
    text = render_config(config) + repr(config)
    assert "s3cr3t-value" not in text
    assert "pw-hunter2" not in text
    assert tomllib.loads(render_config(config))["mcp"]["servers"]["tools"]["url"] == (
        "https://user:***@mcp.example/mcp?token=***"
    )


def test_repr_masks_secrets() -> None:
    config = config_from_mapping(
        {"recording": {"database": "postgresql://bob:hunter2@db/bridge"}},
        {"ANTHROPIC_API_KEY": SECRET},
    )
    text = repr(config)
    assert SECRET not in text
    assert "hunter2" not in text
    assert "key='sk-a...0123'" in text


def test_extra_keys_are_masked_in_repr_and_render() -> None:
    other = "sk-ant-api03-other-secret-value-9876"
    config = config_from_mapping({"providers": {"anthropic": {"key": SECRET, "keys": [other]}}}, {})
    text = repr(config) + render_config(config)
    assert SECRET not in text
    assert other not in text
    assert "keys=('sk-a...9876',)" in text
    assert 'keys = ["sk-a...9876"]  # masked, from the file' in render_config(config).splitlines()


def test_a_misplaced_extra_key_is_not_echoed_in_the_message() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({"providers": {"anthropic": {"keys": [1234567890123]}}}, {})
    assert "1234567890123" not in str(caught.value)


def test_a_misplaced_secret_is_not_echoed_in_the_message() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({"providers": {"anthropic": {"key": 1234567890123}}}, {})
    assert "1234567890123" not in str(caught.value)


# --- render_config ---------------------------------------------------------------------------


def test_render_config_is_valid_toml_without_secrets() -> None:
    config = config_from_mapping(
        {"recording": {"database": "postgresql://bob:hunter2@db:5432/bridge"}},
        {"ANTHROPIC_API_KEY": SECRET},
    )
    text = render_config(config)
    assert SECRET not in text
    assert "hunter2" not in text
    assert 'key = "sk-a...0123"  # masked, from ANTHROPIC_API_KEY' in text.splitlines()
    parsed = tomllib.loads(text)
    assert parsed["providers"]["anthropic"]["key"] == mask_secret(SECRET)
    assert parsed["recording"]["database"] == "postgresql://bob:***@db:5432/bridge"


def test_render_config_loads_back_to_the_same_config() -> None:
    config = config_from_mapping(
        {
            "server": {"port": 0, "grace_period": 1},
            "auth": {"mode": "header"},
            "providers": {
                "anthropic": {},
                "anthropic-eu": {"type": "anthropic", "base_url": "https://eu.example/"},
            },
        },
        {},
    )
    assert config_from_mapping(tomllib.loads(render_config(config)), {}) == config


def test_render_config_loads_back_the_same_resilience_settings() -> None:
    config = config_from_mapping(
        {
            "providers": {
                "anthropic": {
                    "max_retries": 0,
                    "key_cooldown": 2.5,
                    "response_timeout": 120,
                    "stream_idle_timeout": 45.5,
                    "circuit_breaker": {"timeout": 5, "failure_statuses": [429, 503]},
                },
                "openai": {"circuit_breaker": {}},
                "copilot": {},
            }
        },
        {},
    )
    text = render_config(config)
    assert "[providers.anthropic.circuit_breaker]" in text.splitlines()
    assert {
        "response_timeout = 120.0  # from the file",
        "stream_idle_timeout = 45.5  # from the file",
    } <= set(text.splitlines())
    assert "[providers.copilot.circuit_breaker]" not in text
    assert config_from_mapping(tomllib.loads(text), {}) == config


def test_render_config_keeps_an_empty_provider_set_empty() -> None:
    config = Config()
    assert config_from_mapping(tomllib.loads(render_config(config)), {}) == config


@given(
    path=st.text(min_size=1).filter(lambda p: "@" not in p),
    host=st.text(min_size=1).filter(lambda h: not any(c.isspace() or c == "/" for c in h)),
)
def test_render_config_round_trips_any_string(path: str, host: str) -> None:
    config = Config(
        server=ServerConfig(host=host), recording=RecordingConfig(database="sqlite:///" + path)
    )
    assert config_from_mapping(tomllib.loads(render_config(config)), {}) == config


# --- MCP servers -----------------------------------------------------------------------------


def test_mcp_defaults_have_no_servers() -> None:
    assert load_config(environ={}).mcp == MCPConfig(max_iterations=16, call_timeout=30.0)
    assert Config().mcp.servers == ()


def test_mcp_servers_are_read_from_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bridge.toml",
        """
        [mcp]
        max_iterations = 4
        call_timeout = 5
        [mcp.servers.deepwiki]
        url = "https://mcp.example.com/mcp"
        headers = { Authorization = "Bearer ${actor.metadata.github_token}" }
        allow = "^ask_question$"
        [mcp.servers.local]
        command = "python"
        args = ["-m", "my_server"]
        env = { KEY = "value" }
        deny = "delete"
        """,
    )
    mcp = load_config(path, environ={}).mcp
    assert mcp == MCPConfig(
        max_iterations=4,
        call_timeout=5.0,
        servers=(
            MCPServerConfig(
                name="deepwiki",
                url="https://mcp.example.com/mcp",
                headers={"Authorization": "Bearer ${actor.metadata.github_token}"},
                allow="^ask_question$",
            ),
            MCPServerConfig(
                name="local",
                command="python",
                args=("-m", "my_server"),
                env={"KEY": "value"},
                deny="delete",
            ),
        ),
    )
    assert [server.references_actor for server in mcp.servers] == [True, False]


def test_mcp_environment_overrides() -> None:
    environ = {"BRIDGE_MCP_MAX_ITERATIONS": "2", "BRIDGE_MCP_CALL_TIMEOUT": "1.5"}
    assert config_from_mapping({}, environ).mcp == MCPConfig(max_iterations=2, call_timeout=1.5)


MCP_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"mcp": {"max_iterations": 0}}, "mcp.max_iterations must be an integer >= 1, got 0"),
    ({"mcp": {"call_timeout": 0}}, "mcp.call_timeout must be a number of seconds > 0, got 0"),
    (
        {"mcp": {"servers": {"Deep_Wiki": {"url": "http://x/mcp"}}}},
        "invalid MCP server name 'Deep_Wiki': use lower-case letters, digits and single"
        " hyphens, e.g. 'deepwiki' or 'github-tools'",
    ),
    (
        {"mcp": {"servers": {"x": {}}}},
        "mcp.servers.x needs exactly one of url (Streamable HTTP) or command (stdio), got neither",
    ),
    (
        {"mcp": {"servers": {"x": {"url": "http://h/mcp", "command": "python"}}}},
        "mcp.servers.x needs exactly one of url (Streamable HTTP) or command (stdio), got both",
    ),
    (
        {"mcp": {"servers": {"x": {"url": "mcp.example.com"}}}},
        "mcp.servers.x.url must be an http:// or https:// URL with a host, got 'mcp.example.com'",
    ),
    (
        {"mcp": {"servers": {"x": {"url": "http://h/mcp", "allow": "("}}}},
        "mcp.servers.x.allow must be a valid Python regular expression (missing ),"
        " unterminated subpattern at position 0), got '('",
    ),
    (
        {"mcp": {"servers": {"x": {"url": "http://h/", "headers": {"A": "${actor.name}"}}}}},
        "mcp.servers.x.headers.A may only reference ${actor.id} or ${actor.metadata.<key>},"
        " got '${actor.name}'",
    ),
    (
        {"mcp": {"servers": {"x": {"url": "http://h/", "headers": {"A": 12345}}}}},
        "mcp.servers.x.headers must be a table of strings, got a value of type int for 'A'",
    ),
    (
        {"mcp": {"servers": {"x": {"command": "python", "args": "-m x"}}}},
        "mcp.servers.x.args must be a list of strings, got '-m x'",
    ),
    (
        {"mcp": {"servers": {"x": {"url": "http://h/", "env": {"K": "v"}}}}},
        "mcp.servers.x.env is for stdio servers; use headers with url",
    ),
    (
        {"mcp": {"servers": {"x": {"url": "http://h/", "alow": "a"}}}},
        "unknown key 'mcp.servers.x.alow'; did you mean 'mcp.servers.x.allow'?",
    ),
]


@pytest.mark.parametrize(("data", "message"), MCP_ERRORS)
def test_invalid_mcp_settings_are_rejected_with_the_rule(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=exactly(message)):
        config_from_mapping(data, {})


def test_an_invalid_deny_regex_names_the_key_and_the_regex_error() -> None:
    with pytest.raises(ConfigError, match=r"^mcp\.servers\.x\.deny must be a valid Python regular"):
        MCPServerConfig("x", url="http://h/mcp", deny="(?P<")


def test_duplicate_mcp_server_names_are_rejected() -> None:
    server = MCPServerConfig("x", command="python")
    with pytest.raises(ConfigError, match=r"^duplicate MCP server name 'x'"):
        MCPConfig(servers=(server, server))


def test_mcp_header_and_env_values_are_masked() -> None:
    data = {
        "mcp": {
            "servers": {
                "remote": {"url": "https://h/mcp", "headers": {"Authorization": SECRET}},
                "local": {"command": "python", "env": {"TOKEN": SECRET}},
            }
        }
    }
    config = config_from_mapping(data, {})
    assert SECRET not in repr(config)
    text = render_config(config)
    assert SECRET not in text
    assert 'headers = { "Authorization" = "sk-a...0123" }  # masked, from the file' in (
        text.splitlines()
    )
    parsed = tomllib.loads(text)["mcp"]
    assert parsed["servers"]["local"]["env"] == {"TOKEN": mask_secret(SECRET)}
    assert parsed["servers"]["remote"]["url"] == "https://h/mcp"


def test_render_config_loads_back_the_same_mcp_servers() -> None:
    data = {
        "mcp": {
            "max_iterations": 3,
            "servers": {
                "remote": {"url": "https://h/mcp", "allow": "^a", "deny": "b$"},
                "local": {"command": "python", "args": ["-m", "srv", '--flag="x"']},
            },
        }
    }
    config = config_from_mapping(data, {})
    assert config_from_mapping(tomllib.loads(render_config(config)), {}) == config


# --- observability.metrics_auth ----------------------------------------------------------------


def test_metrics_auth_is_off_by_default() -> None:
    config = config_from_mapping({}, {})
    assert config.observability.metrics_auth is False
    assert config.observability.metrics_key == ""


def test_metrics_auth_needs_a_key() -> None:
    with pytest.raises(ConfigError, match=r"observability.metrics_auth = true needs a key"):
        config_from_mapping({"observability": {"metrics_auth": True}}, {})
    with pytest.raises(ConfigError, match=r"set observability.metrics_key or auth.admin_key"):
        config_from_mapping({}, {"BRIDGE_OBSERVABILITY_METRICS_AUTH": "true"})


def test_metrics_auth_takes_the_metrics_key_or_the_admin_key() -> None:
    dedicated = config_from_mapping(
        {"observability": {"metrics_auth": True, "metrics_key": "scrape-secret-0123456789"}}, {}
    )
    assert dedicated.observability.metrics_auth is True
    admin = config_from_mapping(
        {"observability": {"metrics_auth": True}, "auth": {"admin_key": "admin-secret-123456"}}, {}
    )
    assert admin.auth.admin_key == "admin-secret-123456"
    with pytest.raises(ConfigError, match=r"observability\.metrics_auth must be true or false"):
        config_from_mapping({"observability": {"metrics_auth": "yes"}}, {})


def test_metrics_key_is_masked_in_render_and_repr() -> None:
    config = config_from_mapping(
        {"observability": {"metrics_auth": True, "metrics_key": "scrape-secret-0123456789"}}, {}
    )
    text = render_config(config) + repr(config)
    assert "scrape-secret-0123456789" not in text
    assert 'metrics_key = "scra...6789"  # masked' in render_config(config)


# --- The first hour (issue 15): keys, default providers, base URLs, precedence ---------------


def test_a_provider_without_a_central_key_is_warned_about() -> None:
    warnings = missing_key_warnings(config_from_mapping({}, {"ANTHROPIC_API_KEY": SECRET}))
    assert len(warnings) == 1  # openai; copilot's users bring their own token
    assert "providers.openai.key" in warnings[0]
    assert "OPENAI_API_KEY" in warnings[0]
    assert missing_key_warnings(config_from_mapping({"providers": {"defaults": False}}, {})) == []
    data = {"providers": {"local-llm": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}}}
    (warning,) = missing_key_warnings(
        config_from_mapping(data, {"ANTHROPIC_API_KEY": SECRET, "OPENAI_API_KEY": SECRET})
    )
    assert "providers.local-llm.key" in warning
    assert "placeholder" in warning  # a local server may take no key at all
    assert "OPENAI_API_KEY" not in warning  # the variable feeds only the provider 'openai'


def test_whether_users_bring_their_own_key_is_a_trait_of_the_provider_type() -> None:
    assert {name: t.central_key for name, t in PROVIDER_TYPES.items()} == {
        "anthropic": True,
        "openai": True,
        "copilot": False,
    }


def test_adding_a_provider_keeps_the_defaults() -> None:
    data = {"providers": {"local-llm": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}}}
    config = config_from_mapping(data, {})
    assert [p.name for p in config.providers] == ["anthropic", "openai", "copilot", "local-llm"]
    assert config.provider("anthropic").base_url == "https://api.anthropic.com/"


def test_a_file_provider_named_like_a_default_replaces_it_in_place() -> None:
    data = {
        "providers": {
            "local-llm": {"type": "openai", "base_url": "http://x/v1"},
            "openai": {"max_retries": 0},
        }
    }
    config = config_from_mapping(data, {})
    assert [p.name for p in config.providers] == ["anthropic", "openai", "copilot", "local-llm"]
    assert config.provider("openai").max_retries == 0


def test_providers_defaults_false_keeps_only_the_files_providers() -> None:
    data = {
        "providers": {
            "defaults": False,
            "anthropic-eu": {"type": "anthropic", "base_url": "http://eu/"},
        }
    }
    assert [p.name for p in config_from_mapping(data, {}).providers] == ["anthropic-eu"]
    assert config_from_mapping({"providers": {"defaults": True}}, {}).providers == (
        config_from_mapping({}, {}).providers
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"providers": {"defaults": "no"}},
            "providers.defaults in bridge.toml must be true or false, got 'no'",
        ),
        (
            {"providers": {"default": False}},
            "unknown key 'providers.default' in bridge.toml; did you mean 'providers.defaults'?",
        ),
    ],
)
def test_providers_defaults_is_validated(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=exactly(message)):
        config_from_mapping(data, {}, source="bridge.toml")


@pytest.mark.parametrize("base_url", [None, ""])
def test_a_provider_not_named_like_its_type_needs_a_base_url(base_url: str | None) -> None:
    entry = {"type": "openai"} if base_url is None else {"type": "openai", "base_url": base_url}
    with pytest.raises(ConfigError, match=r"^providers\.local-llm\.base_url in bridge\.toml is"):
        config_from_mapping({"providers": {"local-llm": entry}}, {}, source="bridge.toml")
    with pytest.raises(ConfigError, match=r"^providers\.local-llm\.base_url is required"):
        ProviderConfig(name="local-llm", type="openai", base_url=base_url or "")


def test_sdk_variables_beat_the_file() -> None:
    data = {
        "providers": {
            "anthropic": {"key": "file-key", "base_url": "http://file/", "max_retries": 1}
        }
    }
    environ = {
        "ANTHROPIC_API_KEY": SECRET,
        "ANTHROPIC_BASE_URL": "http://env/",
        "ANTHROPIC_MAX_RETRIES": "7",
    }
    provider = config_from_mapping(data, environ).provider("anthropic")
    assert (provider.key, provider.base_url, provider.max_retries) == (SECRET, "http://env/", 7)


def test_render_config_says_where_each_value_came_from() -> None:
    data = {
        "server": {"port": 9000, "host": "0.0.0.0"},
        "providers": {"anthropic": {"base_url": "http://file/", "max_retries": 1}},
    }
    environ = {"ANTHROPIC_BASE_URL": "http://env/", "BRIDGE_SERVER_PORT": "9001"}
    config = config_from_mapping(data, environ, source="bridge.toml")
    lines = render_config(config).splitlines()
    assert 'base_url = "http://env/"  # from ANTHROPIC_BASE_URL' in lines
    assert "port = 9001  # from BRIDGE_SERVER_PORT" in lines
    assert 'host = "0.0.0.0"  # from bridge.toml' in lines
    assert "max_retries = 1  # from bridge.toml" in lines
    assert "backlog = 1024" in lines  # a default is unmarked
    assert config_from_mapping(tomllib.loads("\n".join(lines)), {}) == config


def test_render_config_shows_the_default_providers_next_to_the_files() -> None:
    data = {"providers": {"local-llm": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}}}
    config = config_from_mapping(data, {})
    text = render_config(config)
    for name in ("anthropic", "openai", "copilot", "local-llm"):
        assert f"[providers.{name}]" in text
    assert config_from_mapping(tomllib.loads(text), {}) == config
    alone = config_from_mapping({"providers": {"defaults": False, **data["providers"]}}, {})
    assert config_from_mapping(tomllib.loads(render_config(alone)), {}) == alone


@pytest.mark.parametrize("statuses", [[200], [399, 503], [304]])
def test_breaker_failure_statuses_must_be_error_statuses(statuses: list[int]) -> None:
    data = {"providers": {"anthropic": {"circuit_breaker": {"failure_statuses": statuses}}}}
    with pytest.raises(
        ConfigError,
        match=exactly(
            "providers.anthropic.circuit_breaker.failure_statuses must be a list of HTTP error"
            f" statuses from 400 to 599, got {statuses}"
        ),
    ):
        config_from_mapping(data, {})
