"""Gateway keys: format, hashing, storage in every store (SQLite, PostgreSQL, memory),
constant-time lookup, the CLI."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.identity.keys import (
    KEY_LENGTH,
    KEY_PREFIX,
    PREFIX_LENGTH,
    GatewayKey,
    KeyStore,
    generate_key,
    hash_key,
    looks_like_gateway_key,
    resolve_key,
)
from bridge.process.cli import main
from bridge.recording.memory import MemoryStore
from bridge.recording.postgres import PostgresStore
from bridge.recording.records import CredentialKind, InterceptionStarted, utcnow
from bridge.recording.sql import SQLStore
from bridge.recording.sqlite import SQLiteStore
from bridge.recording.store import StoreError

from ..postgres import SQLDatabase, new_sql_database

URLSAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStore | MemoryStore]:
    kind = request.param
    chosen = MemoryStore() if kind == "memory" else new_sql_database(kind, request, tmp_path).open()
    try:
        yield chosen
    finally:
        chosen.close()


# -- the key format ------------------------------------------------------------------------


def test_a_generated_key_has_the_prefix_the_shape_and_256_secret_bits() -> None:
    secret, prefix = generate_key()
    assert secret.startswith(KEY_PREFIX)
    assert secret.startswith(prefix + "-")
    assert len(prefix) == PREFIX_LENGTH == 11
    assert len(secret) == KEY_LENGTH
    hidden = secret[PREFIX_LENGTH + 1 :]
    assert len(hidden) * 6 >= 256  # base64: 6 bits per character
    assert set(secret[len(KEY_PREFIX) :]) <= URLSAFE
    assert looks_like_gateway_key(secret)


def test_generated_keys_and_prefixes_are_unique() -> None:
    pairs = [generate_key() for _ in range(2000)]
    assert len({secret for secret, _ in pairs}) == 2000
    assert len({prefix for _, prefix in pairs}) == 2000


def test_the_hash_is_sha256_hex_and_not_the_key() -> None:
    secret, prefix = generate_key()
    digest = hash_key(secret)
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")
    assert secret not in digest
    assert prefix[len(KEY_PREFIX) :] not in digest
    assert hash_key(secret) == digest
    assert hash_key(generate_key()[0]) != digest


@pytest.mark.parametrize(
    "value",
    [
        "",
        "bk-",
        "sk-ant-api03-abcdefgh",
        "bk-abcdefgh-" + "a" * 42,  # one short
        "bk-abcdefgh-" + "a" * 44,  # one long
        "bk-abcdefgh_" + "a" * 43,  # wrong separator
        "bk-abc+efgh-" + "a" * 43,  # not URL-safe
        "BK-abcdefgh-" + "a" * 43,
        " bk-abcdefgh-" + "a" * 42,
        "bk-abcdefgh-" + "a" * 42 + "\n",
    ],
)
def test_values_that_are_not_shaped_like_keys_are_told_apart(value: str) -> None:
    assert not looks_like_gateway_key(value)


@given(st.text(max_size=80))
def test_looks_like_gateway_key_never_raises_and_accepts_only_the_shape(value: str) -> None:
    if looks_like_gateway_key(value):
        assert value.startswith(KEY_PREFIX)
        assert len(value) == KEY_LENGTH
        assert value[PREFIX_LENGTH] == "-"


# -- the stores ----------------------------------------------------------------------------


def test_every_store_satisfies_the_keystore_protocol(store: SQLStore | MemoryStore) -> None:
    assert isinstance(store, KeyStore)


def test_a_created_key_is_listed_and_found_by_its_secret(
    store: SQLStore | MemoryStore,
) -> None:
    before = utcnow()
    secret, key = store.create_key("alice", {"team": "payments"})
    assert secret.startswith(key.prefix + "-")
    assert looks_like_gateway_key(secret)
    assert key.user == "alice"
    assert key.metadata == {"team": "payments"}
    assert key.last_used_at is None
    assert key.revoked_at is None
    assert before <= key.created_at <= utcnow()
    assert store.list_keys() == [key]
    assert store.find_key(secret) == key


def test_keys_are_listed_oldest_first_with_revoked_ones(
    store: SQLStore | MemoryStore,
) -> None:
    _, first = store.create_key("alice", {})
    _, second = store.create_key("bob", {"env": "ci"})
    assert store.revoke_key(first.id)
    listed = store.list_keys()
    assert [key.id for key in listed] == [first.id, second.id]
    assert listed[0].revoked_at is not None
    assert listed[1].revoked_at is None


def test_a_revoked_key_is_not_found_and_revoking_again_returns_false(
    store: SQLStore | MemoryStore,
) -> None:
    secret, key = store.create_key("alice", {})
    assert store.revoke_key(key.id) is True
    assert store.find_key(secret) is None
    (revoked,) = store.list_keys()
    assert store.revoke_key(key.id) is False
    assert store.list_keys() == [revoked]  # the first revocation time is kept


def test_revoking_an_unknown_id_returns_false(store: SQLStore | MemoryStore) -> None:
    store.create_key("alice", {})
    assert store.revoke_key("00000000-0000-4000-8000-000000000000") is False
    assert all(key.revoked_at is None for key in store.list_keys())


def test_unknown_and_malformed_secrets_are_not_found(store: SQLStore | MemoryStore) -> None:
    store.create_key("alice", {})
    assert store.find_key(generate_key()[0]) is None
    assert store.find_key("sk-ant-api03-something") is None
    assert store.find_key("") is None


def test_a_secret_with_the_right_prefix_but_a_wrong_rest_is_not_found(
    store: SQLStore | MemoryStore,
) -> None:
    secret, _ = store.create_key("alice", {})
    last = secret[-1]
    forged = secret[:-1] + ("A" if last != "A" else "B")
    assert looks_like_gateway_key(forged)
    assert store.find_key(forged) is None
    other_rest = secret[: PREFIX_LENGTH + 1] + generate_key()[0][PREFIX_LENGTH + 1 :]
    assert store.find_key(other_rest) is None


def test_touch_records_the_last_use_and_never_moves_it_back(
    store: SQLStore | MemoryStore,
) -> None:
    secret, key = store.create_key("alice", {})
    later = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    store.touch_key(key.id, later)
    found = store.find_key(secret)
    assert found is not None
    assert found.last_used_at == later
    store.touch_key(key.id, later - dt.timedelta(hours=1))
    (listed,) = store.list_keys()
    assert listed.last_used_at == later
    store.touch_key("no-such-id", later)  # ignored


def test_metadata_returned_by_a_store_cannot_change_what_is_stored(
    store: SQLStore | MemoryStore,
) -> None:
    secret, key = store.create_key("alice", {"team": "payments"})
    key.metadata["team"] = "changed"
    (listed,) = store.list_keys()
    listed.metadata["extra"] = "x"
    found = store.find_key(secret)
    assert found is not None
    assert found.metadata == {"team": "payments"}


@pytest.mark.parametrize(
    ("user", "metadata", "message"),
    [
        ("", {}, r"invalid user '' for a gateway key: give a non-empty name"),
        (" alice", {}, r"invalid user ' alice'"),
        ("alice", {"": "x"}, r"invalid metadata ''='x'"),
    ],
)
def test_a_key_for_a_bad_user_or_metadata_is_refused(
    store: SQLStore | MemoryStore, user: str, metadata: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.create_key(user, metadata)
    assert store.list_keys() == []


def counting_compare_digest(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    real: Callable[[str, str], bool] = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(
        hmac, "compare_digest", counting
    )  # bridge.identity.keys calls hmac.compare_digest
    return calls


def test_find_compares_digests_exactly_once_whether_or_not_the_prefix_exists(
    store: SQLStore | MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, key = store.create_key("alice", {})
    calls = counting_compare_digest(monkeypatch)
    wrong_rest = secret[: PREFIX_LENGTH + 1] + generate_key()[0][PREFIX_LENGTH + 1 :]
    cases = [
        (secret, True),  # known prefix, right key
        (wrong_rest, False),  # known prefix, wrong key
        (generate_key()[0], False),  # unknown prefix
        ("not-a-key", False),  # malformed: no lookup, still one comparison
    ]
    for value, found in cases:
        calls.clear()
        assert (store.find_key(value) is not None) is found
        assert len(calls) == 1, value
        assert calls[0][0] == hash_key(value)
    assert store.revoke_key(key.id)
    calls.clear()
    assert store.find_key(secret) is None
    assert len(calls) == 1


# -- SQLite and PostgreSQL specifics -------------------------------------------------------


def test_the_database_file_never_contains_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    with SQLiteStore(path) as store:
        secret, key = store.create_key("alice", {"team": "payments"})
        store.touch_key(key.id, utcnow())
        assert store.find_key(secret) is not None
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert key.prefix.encode() in data  # the check can see what is stored
    assert hash_key(secret).encode() in data
    assert secret.encode() not in data
    assert secret[PREFIX_LENGTH + 1 :].encode() not in data


def test_keys_are_looked_up_by_an_index_on_prefix(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "bridge.db") as store:
        store.create_key("alice", {})
    with sqlite3.connect(tmp_path / "bridge.db") as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM bridge_gateway_keys WHERE prefix = ?", ("bk-x",)
        ).fetchall()
    assert "USING INDEX" in " ".join(str(step[-1]) for step in plan)


def test_postgres_keeps_no_secret_and_looks_keys_up_by_an_index(postgres_url: str) -> None:
    with PostgresStore(postgres_url) as store:
        secret, key = store.create_key("alice", {"team": "payments"})
        store.touch_key(key.id, utcnow())
        assert store.find_key(secret) is not None
    with psycopg.connect(postgres_url) as conn:
        stored = " ".join(
            row[0] for row in conn.execute("SELECT t::text FROM bridge_gateway_keys t")
        )
        conn.execute("SET enable_seqscan = off")  # a table this small is scanned otherwise
        plan = conn.execute(
            "EXPLAIN SELECT * FROM bridge_gateway_keys WHERE prefix = %s", ("bk-x",)
        ).fetchall()
    assert key.prefix in stored
    assert hash_key(secret) in stored
    assert secret not in stored
    assert secret[PREFIX_LENGTH + 1 :] not in stored
    assert "Index" in " ".join(step[0] for step in plan)


def test_migrating_a_version_1_database_keeps_its_rows_and_adds_keys(
    sql_database: SQLDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = sql_database.module.MIGRATIONS
    monkeypatch.setattr(sql_database.module, "MIGRATIONS", current[:1])
    start = InterceptionStarted(
        id="i-1",
        initiator_id="alice",
        provider="anthropic",
        provider_name="anthropic",
        model="claude",
        streaming=False,
        client="Claude Code",
        user_agent="claude-cli/2",
        credential_kind=CredentialKind.CENTRALIZED,
        credential_hint="",
        started_at=utcnow(),
    )
    with sql_database.open() as old:
        assert old.schema_version() == 1
        old.write_batch([start])
    monkeypatch.setattr(sql_database.module, "MIGRATIONS", current)
    with sql_database.open() as new:
        assert new.schema_version() == len(current) >= 2
        new.check()
        assert [row["id"] for row in new.interceptions()] == ["i-1"]
        secret, key = new.create_key("alice", {})
        assert new.find_key(secret) == key


def test_a_user_the_database_cannot_encode_is_refused_with_a_store_error(
    sql_database: SQLDatabase,
) -> None:
    """Unlike a record's text, a key's user is not patched up: that would change who it is."""
    with sql_database.open() as store:
        with pytest.raises(StoreError, match=r"cannot hold a value given: .*surrogates"):
            store.create_key("bad\udcff", {})
        assert store.list_keys() == []


def test_keys_written_by_one_store_are_found_by_another_on_the_same_database(
    sql_database: SQLDatabase,
) -> None:
    with sql_database.open() as writer, sql_database.open() as reader:
        secret, key = writer.create_key("alice", {"team": "payments"})
        assert reader.find_key(secret) == key
        reader.touch_key(key.id, key.created_at)
        assert writer.list_keys()[0].last_used_at == key.created_at


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def database(
    sql_database: SQLDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> SQLDatabase:
    """The database the CLI is pointed at (BRIDGE_RECORDING_DATABASE), of each SQL kind."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRIDGE_RECORDING_DATABASE", sql_database.url)
    return sql_database


def test_cli_create_list_revoke_round_trip(
    database: SQLDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--user", "alice", "--meta", "team=payments", "env=ci"]) == 0
    created = capsys.readouterr()
    secret = created.out.strip()
    assert looks_like_gateway_key(secret)
    assert "only time the key is shown" in created.err
    assert secret not in created.err

    with database.open() as store:
        found = store.find_key(secret)
    assert found is not None
    assert found.user == "alice"
    assert found.metadata == {"team": "payments", "env": "ci"}

    assert main(["keys", "list"]) == 0
    table = capsys.readouterr().out
    assert found.id in table
    assert found.prefix in table
    assert "alice" in table
    assert "team=payments" in table
    assert secret not in table
    assert secret[PREFIX_LENGTH + 1 :] not in table
    assert hash_key(secret) not in table

    assert main(["keys", "list", "--format", "json"]) == 0
    out = capsys.readouterr().out
    (listed,) = json.loads(out)
    assert listed["id"] == found.id
    assert listed["revoked_at"] is None
    assert set(listed) == {
        "id",
        "user",
        "prefix",
        "metadata",
        "created_at",
        "last_used_at",
        "revoked_at",
    }
    assert secret not in out
    assert hash_key(secret) not in out

    assert main(["keys", "revoke", found.id]) == 0
    assert found.id in capsys.readouterr().out
    with database.open() as store:
        assert store.find_key(secret) is None
    assert main(["keys", "list", "--format", "json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["revoked_at"] is not None

    assert main(["keys", "revoke", found.id]) == 0  # revoking again changes nothing
    assert "already revoked" in capsys.readouterr().out


def test_cli_revoking_an_unknown_id_exits_1_and_says_so(
    database: SQLDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "revoke", "no-such-id"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bridge: no gateway key has id or prefix 'no-such-id'")
    assert "bridgectl keys list" in err


@pytest.mark.parametrize("how", ["prefix", "start of the prefix", "whole key", "start of id"])
def test_cli_revokes_by_prefix_too(
    database: SQLDatabase, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """Users see prefixes (``bk-3fZx9Qp2``), in listings and logs: revoking takes them."""
    assert main(["keys", "create", "--user", "alice"]) == 0
    secret = capsys.readouterr().out.strip()
    with database.open() as store:
        (key,) = store.list_keys()
    reference = {
        "prefix": key.prefix,
        "start of the prefix": key.prefix[:8],
        "whole key": secret,
        "start of id": key.id[:8],
    }[how]
    assert main(["keys", "revoke", reference]) == 0
    assert f"Revoked key {key.id} ({key.prefix}) of user 'alice'" in capsys.readouterr().out
    with database.open() as store:
        assert store.find_key(secret) is None


def test_resolve_key_refuses_an_ambiguous_start() -> None:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    keys = [
        GatewayKey("id-1", "alice", "bk-aaaa1111", {}, when, None, None),
        GatewayKey("id-2", "bob", "bk-aaaa2222", {}, when, None, None),
    ]
    assert resolve_key(keys, "bk-aaaa2").user == "bob"
    assert resolve_key(keys, "id-1").user == "alice"
    with pytest.raises(LookupError, match=r"matches 2 keys: bk-aaaa1111 \(alice\), bk-aaaa2222"):
        resolve_key(keys, "bk-aaaa")
    with pytest.raises(LookupError, match="no gateway key"):
        resolve_key(keys, "")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--meta", "team"], "--meta must be KEY=VALUE with a non-empty KEY, got 'team'"),
        (["--meta", "=x"], "--meta must be KEY=VALUE with a non-empty KEY, got '=x'"),
        (["--meta", "a=1", "--meta", "a=2"], "--meta 'a' is given twice"),
    ],
)
def test_cli_bad_meta_exits_2_with_a_clear_message(
    database: SQLDatabase, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["keys", "create", "--user", "alice", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"bridge: {message}")
    assert captured.out == ""
    with database.open() as store:
        assert store.list_keys() == []


def test_cli_an_empty_user_exits_2(
    database: SQLDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--user", ""]) == 2
    assert capsys.readouterr().err.startswith("bridge: invalid user ''")


def test_cli_list_with_no_keys_says_so(
    database: SQLDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "list"]) == 0
    assert "(no gateway keys;" in capsys.readouterr().out
