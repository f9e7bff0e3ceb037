"""Tests for bridge.telemetry.apidump: file layout, HTTP/1 format, streaming, permissions,
no secrets."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import mask_secret
from bridge.telemetry.apidump import APIDump, _indent_json

NOW = 1_700_000_000.123  # a fixed clock: file names are predictable
CLIENT_TOKEN = "sk-ant-oat01-" + "Secret0123456789" * 3
PROVIDER_KEY = "sk-proj-" + "Provider9876543210" * 2
GATEWAY_KEY = "bk-3fZx9Qp2-" + "g" * 43
COOKIE = "session=cookievalue0123456789abcdef"
AMZ_TOKEN = "FwoGZXIvYXdzEJr//////////wEaDAmzSecurityToken"
SECRETS = [CLIENT_TOKEN, PROVIDER_KEY, GATEWAY_KEY, COOKIE, AMZ_TOKEN]


@pytest.fixture
def dump(tmp_path: Path) -> APIDump:
    return APIDump(tmp_path / "dumps", clock=lambda: NOW)


def test_request_path_replaces_slashes_in_the_model(dump: APIDump) -> None:
    path = dump.request_path("openrouter", "openai/gpt-4.1", "01J0ABC")
    assert path == dump.directory / "openrouter" / "openai-gpt-4.1" / "1700000000123-01J0ABC"


@pytest.mark.parametrize("model", ["..", ".", "", "a\x00b"])
def test_a_model_name_cannot_leave_its_directory(dump: APIDump, model: str) -> None:
    path = dump.request_path("anthropic", model, "id")
    assert path.parent.parent == dump.directory / "anthropic"
    assert path.parent.name not in ("..", ".", "")
    assert "\x00" not in str(path)


HOSTILE_MODEL = "../x\r\nevil" + "a" * 300


def test_a_hostile_model_name_gives_one_short_safe_directory(dump: APIDump) -> None:
    base = dump.request_path("anthropic", HOSTILE_MODEL, "id")
    dump.write_request(base, "POST", "/v1/messages", [], b"{}")
    assert base.parent.parent == dump.directory / "anthropic"
    name = base.parent.name
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name), name
    assert not name.startswith(".")
    [written] = [p for p in dump.directory.rglob("*") if p.is_file()]
    assert written.parent == base.parent
    assert written.resolve().is_relative_to(dump.directory.resolve())


@given(model=st.text(max_size=400))
def test_any_model_name_is_one_bounded_component_inside_the_provider_directory(
    model: str,
) -> None:
    dump = APIDump(Path("/dumps"), clock=lambda: NOW)
    path = dump.request_path("anthropic", model, "id")
    assert path.parent.parent == Path("/dumps/anthropic")
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,100}", path.parent.name)
    assert path.parent.name not in (".", "..")


def test_a_long_passthrough_path_keeps_its_random_suffix(dump: APIDump) -> None:
    path = dump.passthrough_path("anthropic", "/v1/models/" + "x" * 500)
    assert re.fullmatch(r"1700000000123--v1-models-x+-[0-9a-f]{4}", path.name)
    assert len(path.name) < 130


def test_passthrough_path_has_the_path_and_four_hex_digits(dump: APIDump) -> None:
    path = dump.passthrough_path("anthropic", "/v1/models")
    assert path.parent == dump.directory / "anthropic" / "passthrough"
    assert re.fullmatch(r"1700000000123--v1-models-[0-9a-f]{4}", path.name)


def test_request_file_is_http1_with_sorted_headers_pretty_json_and_masked_secrets(
    dump: APIDump,
) -> None:
    body = b'{"model":"claude","z":1.0e1,"a":[],"dup":1,"dup":2,"s":"\\u00e9 \\" , :"}'
    base = dump.request_path("anthropic", "claude", "id1")
    dump.write_request(
        base,
        "POST",
        "https://api.anthropic.com/v1/messages?beta=true",
        [
            ("X-Api-Key", PROVIDER_KEY),
            ("content-type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Authorization", f"Bearer {CLIENT_TOKEN}"),
            ("anthropic-version", "2023-06-01"),
            ("Cookie", COOKIE),
            ("X-Amz-Security-Token", AMZ_TOKEN),
            ("X-Bridge-Key", GATEWAY_KEY),
        ],
        body,
    )
    pretty = (
        b"{\n"
        b'  "model": "claude",\n'
        b'  "z": 1.0e1,\n'
        b'  "a": [],\n'
        b'  "dup": 1,\n'
        b'  "dup": 2,\n'
        b'  "s": "\\u00e9 \\" , :"\n'
        b"}"
    )
    expected = (
        "POST https://api.anthropic.com/v1/messages?beta=true HTTP/1.1\r\n"
        "anthropic-version: 2023-06-01\r\n"
        f"Authorization: Bearer {mask_secret(CLIENT_TOKEN)}\r\n"
        f"Content-Length: {len(pretty)}\r\n"
        "content-type: application/json\r\n"
        f"Cookie: {mask_secret(COOKIE)}\r\n"
        f"X-Amz-Security-Token: {mask_secret(AMZ_TOKEN)}\r\n"
        f"X-Api-Key: {mask_secret(PROVIDER_KEY)}\r\n"
        f"X-Bridge-Key: {mask_secret(GATEWAY_KEY)}\r\n"
        "\r\n"
    ).encode() + pretty
    assert Path(f"{base}.req.txt").read_bytes() == expected


def test_a_body_that_is_not_json_is_dumped_raw(dump: APIDump) -> None:
    base = dump.request_path("openai", "gpt-4.1", "id2")
    body = b"\xff\x00not json {"
    dump.write_request(base, "POST", "/v1/chat", [("Content-Length", "14")], body)
    assert Path(f"{base}.req.txt").read_bytes() == (
        b"POST /v1/chat HTTP/1.1\r\nContent-Length: 14\r\n\r\n" + body
    )


def test_response_file_is_written_as_the_body_streams(dump: APIDump) -> None:
    base = dump.request_path("anthropic", "claude", "id3")
    path = Path(f"{base}.resp.txt")
    headers = [("Set-Cookie", COOKIE), ("content-type", "text/event-stream")]
    with dump.open_response(base, 200, headers) as response:
        head = (
            "HTTP/1.1 200 OK\r\n"
            f"content-type: text/event-stream\r\nSet-Cookie: {mask_secret(COOKIE)}\r\n\r\n"
        ).encode()
        assert path.read_bytes() == head
        response.write(b"event: message_start\n")
        assert path.read_bytes() == head + b"event: message_start\n"
        response.write(b"data: {}\n\n")
    response.write(b"after close")
    assert path.read_bytes() == head + b"event: message_start\ndata: {}\n\n"


def test_unknown_status_has_no_reason_phrase(dump: APIDump) -> None:
    base = dump.request_path("openai", "m", "id4")
    dump.open_response(base, 599, []).close()
    assert Path(f"{base}.resp.txt").read_bytes() == b"HTTP/1.1 599\r\n\r\n"


def test_error_file_holds_the_transport_error(dump: APIDump) -> None:
    base = dump.request_path("openai", "m", "id5")
    dump.write_error(base, "ConnectError: connection refused")
    assert Path(f"{base}.req_error.txt").read_text() == "ConnectError: connection refused"


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o000)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_directories_are_0700_and_files_0600_whatever_the_umask(dump: APIDump) -> None:
    """Dumps hold prompts: only the gateway's own user may read them."""
    base = dump.request_path("anthropic", "a/b", "id6")
    dump.write_request(base, "GET", "/", [], b"")
    dump.open_response(base, 200, []).write(b"x")
    dump.write_error(base, "boom")
    directories = [dump.directory, base.parent.parent, base.parent]
    assert [stat.S_IMODE(d.stat().st_mode) for d in directories] == [0o700] * 3
    files = sorted(base.parent.iterdir())
    assert [f.name.removeprefix(base.name) for f in files] == [
        ".req.txt",
        ".req_error.txt",
        ".resp.txt",
    ]
    assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [0o600] * 3


def _read_only_dir(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only directories")
    tmp_path.chmod(0o555)
    return tmp_path / "dumps"


def _file_in_the_way(tmp_path: Path) -> Path:
    (tmp_path / "dumps").write_text("a file, not a directory")
    return tmp_path / "dumps"


@pytest.mark.parametrize("make_directory", [_read_only_dir, _file_in_the_way])
def test_a_failing_directory_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make_directory: object
) -> None:
    assert callable(make_directory)
    dump = APIDump(make_directory(tmp_path), clock=lambda: NOW)
    base = dump.request_path("anthropic", "claude", "id7")
    try:
        with caplog.at_level(logging.WARNING, logger="bridge.apidump"):
            dump.write_request(base, "POST", "/", [("X-Api-Key", PROVIDER_KEY)], b"{}")
            response = dump.open_response(base, 200, [])
            response.write(b"chunk 1")
            response.write(b"chunk 2")
            dump.write_error(base, "boom")
    finally:
        tmp_path.chmod(0o755)
    failures = [r for r in caplog.records if r.name == "bridge.apidump"]
    # One line each for the request, the response head and the error; the chunks of a
    # response whose head failed are skipped silently.
    assert [r.getMessage() for r in failures] == ["api dump failed"] * 3
    assert all(str(base) in r.path for r in failures)  # type: ignore[attr-defined]
    assert PROVIDER_KEY not in caplog.text


def test_no_secret_appears_anywhere_in_the_dump_directory(dump: APIDump) -> None:
    headers = [
        ("Authorization", f"Bearer {CLIENT_TOKEN}"),
        ("Proxy-Authorization", f"Basic {GATEWAY_KEY}"),
        ("x-api-key", PROVIDER_KEY),
        ("Api-Key", PROVIDER_KEY),
        ("X-Auth-Token", CLIENT_TOKEN),
        ("cookie", COOKIE),
        ("x-amz-security-token", AMZ_TOKEN),
        ("x-bridge-key", GATEWAY_KEY),
        ("X-Goog-Api-Key", PROVIDER_KEY),
    ]
    for base in (
        dump.request_path("anthropic", "claude", "id8"),
        dump.passthrough_path("openai", "/v1/models"),
    ):
        dump.write_request(base, "POST", f"/v1/x?key={PROVIDER_KEY}", headers, b'{"a":1}')
        response = dump.open_response(
            base,
            401,
            [
                ("Set-Cookie", COOKIE),
                ("WWW-Authenticate", f"Bearer realm={CLIENT_TOKEN}"),
                ("Proxy-Authenticate", AMZ_TOKEN),
            ],
        )
        response.write(b'{"error":"unauthorized"}')
        response.close()
        dump.write_error(base, f"upstream refused Bearer {CLIENT_TOKEN}")
    files = [p for p in dump.directory.rglob("*") if p.is_file()]
    assert len(files) == 6
    for path in files:
        content = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in content, f"{secret[:8]}... in {path}"
            assert secret[4:-4].encode() not in content, f"{secret[:8]}... in {path}"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(value=_JSON, spaces=st.sampled_from(["", " ", "\n\t "]))
def test_indenting_keeps_tokens_and_matches_json_dumps(value: object, spaces: str) -> None:
    compact = json.dumps(value, separators=("," + spaces, ":" + spaces))
    assert _indent_json(compact) == json.dumps(value, indent=2)
    assert json.loads(_indent_json(compact)) == value
