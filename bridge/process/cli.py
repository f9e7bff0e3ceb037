"""The ``bridgectl`` command line (also ``python -m bridge``).

Not ``bridge``: iproute2 installs a ``bridge`` command on most Linux machines, and it
would answer ``bridgectl keys create`` with ``Object "keys" is unknown``.

``bridgectl serve``, ``bridgectl check-config``, ``bridgectl usage``, ``bridgectl keys`` and
``bridgectl mock-upstream``. Configuration errors print one clear line and exit 2;
nothing prints a traceback for a user's mistake. A gateway key is printed once, by
``bridgectl keys create``, and never again: ``bridgectl keys list`` shows prefixes only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial

import trio

from bridge.config import (
    Config,
    ConfigError,
    apply_flags,
    load_config,
    mask_url,
    missing_key_warnings,
    render_config,
)
from bridge.identity.keys import KEY_TOUCH_INTERVAL, GatewayKey, KeyStore, resolve_key
from bridge.recording.reports import format_usage, parse_since
from bridge.recording.store import GROUP_BY, StoreError, check_group_by, open_store
from bridge.telemetry.logs import configure_logging
from bridge.telemetry.tracing import configure_tracing

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridgectl", description="An AI gateway on Trio.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="path to bridge.toml")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument(
        "--workers", type=int, help="processes sharing the port (overrides server.workers)"
    )
    serve.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING or ERROR (overrides observability.log_level)"
    )

    check = commands.add_parser("check-config", help="validate and print the configuration")
    check.add_argument("--config", help="path to bridge.toml")

    usage = commands.add_parser("usage", help="usage report from the recording database")
    usage.add_argument("--config", help="path to bridge.toml")
    usage.add_argument("--since", help="e.g. 24h, 7d, or a date such as 2026-11-01")
    usage.add_argument(
        "--by",
        action="append",
        type=_group_name,
        metavar="{" + ",".join(GROUP_BY) + ",meta:KEY}",
        help="group by this column, or by a key's metadata as meta:team"
        " (repeat to combine; default: user)",
    )
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")

    keys = commands.add_parser("keys", help="create, list and revoke gateway keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--user", required=True, help="the user the key identifies")
    create.add_argument(
        "--meta",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="a label to keep with the key, e.g. team=payments (repeatable)",
    )
    create.add_argument("--config", help="path to bridge.toml")
    listing = key_commands.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.add_argument("--config", help="path to bridge.toml")
    revoke = key_commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument(
        "id",
        help="the key's id or its prefix (bk-...), as `bridgectl keys list` shows them;"
        " a unique start of either is enough",
    )
    revoke.add_argument("--config", help="path to bridge.toml")

    mock = commands.add_parser(
        "mock-upstream",
        help="a deterministic fake provider for demos",
        description="A fake Anthropic and OpenAI upstream replaying the scenarios in"
        " fixtures/: point ANTHROPIC_BASE_URL at http://HOST:PORT/ and OPENAI_BASE_URL at"
        " http://HOST:PORT/v1/ (an x-mock-scenario header picks another scenario).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    mock.add_argument("--host", default="127.0.0.1", help="address to listen on")
    mock.add_argument("--port", type=int, default=9090, help="port to listen on")
    return parser


def _group_name(text: str) -> str:
    """A ``--by`` value: one of :data:`GROUP_BY`, or ``meta:KEY``."""
    try:
        (name,) = check_group_by((text,))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def _load(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bridge`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check-config":
            config = _load(args)
            for warning in missing_key_warnings(config):
                print(f"bridge: warning: {warning}", file=sys.stderr)
            print(render_config(config), end="")
            return 0
        if args.command == "usage":
            return _usage(args)
        if args.command == "keys":
            return _keys(args)
        if args.command == "mock-upstream":
            from bridge.mock.upstream import main as mock_main

            mock_main(args.port, args.host)
            return 0
    except (ConfigError, StoreError) as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`bridgectl keys list | head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 2


def _serve(args: argparse.Namespace) -> int:
    from bridge.process.server import hypercorn_config, listen, run_workers

    flags = {
        "server.host": ("--host", args.host),
        "server.port": ("--port", args.port),
        "server.workers": ("--workers", args.workers),
        "observability.log_level": ("--log-level", args.log_level and args.log_level.upper()),
    }
    config = apply_flags(
        _load(args), {key: flag for key, flag in flags.items() if flag[1] is not None}
    )
    # Once, here, and not in each worker: a provider that will refuse every request made
    # with a gateway key is worth a line before anyone sends one.
    configure_logging(config.observability)
    for warning in missing_key_warnings(config):
        logging.getLogger("bridge").warning("%s", warning)
    if config.server.workers > 1:
        # Tried once here, so that a taken port is one line, not one per worker.
        for sock in listen(hypercorn_config(config), config).insecure_sockets:
            sock.close()
        configure_logging(config.observability)  # the supervisor logs workers it replaces
        return run_workers(config, serve_worker_process)
    serve_worker(config)
    return 0


def serve_worker_process(config: Config) -> None:
    """:func:`serve_worker` as one of :func:`~bridge.process.server.run_workers`' processes.

    A database or configuration that stops the start-up is one line and exit status 2,
    as :func:`main` makes it with one worker, not a traceback from each worker.
    """
    try:
        serve_worker(config)
    except (ConfigError, StoreError) as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        sys.exit(2)


def serve_worker(config: Config) -> None:
    """One gateway process: logging, tracing, then serve until a signal."""
    from bridge.process.server import serve

    configure_logging(config.observability)
    stop_tracing = configure_tracing()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, config))
            for url in binds:
                logging.getLogger("bridge").info("bridge listening on %s", url)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:
        # A database or configuration that stops the start-up comes out of the server's
        # nurseries wrapped: give it back bare, so that main() prints its one clear line.
        error = _only_user_error(group)
        if error is None:
            raise
        raise error from None
    finally:
        stop_tracing()


def _only_user_error(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The :class:`ConfigError` or :class:`StoreError` that is all *group* holds, if so."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    if len(leaves) == 1 and isinstance(leaves[0], ConfigError | StoreError):
        return leaves[0]
    return None


def _usage(args: argparse.Namespace) -> int:
    config = _load(args)
    by = tuple(dict.fromkeys(args.by or ["user"]))
    since = parse_since(args.since) if args.since else None
    store = open_store(config.recording.database)
    try:
        rows = store.usage(since=since, by=by)
    finally:
        store.close()
    print(format_usage(rows, by, args.format))
    return 0


def parse_meta(items: Sequence[str]) -> dict[str, str]:
    """``--meta KEY=VALUE`` arguments as a dict; :class:`ConfigError` for a bad one."""
    metadata: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(
                f"--meta must be KEY=VALUE with a non-empty KEY, got {item!r};"
                " e.g. --meta team=payments"
            )
        if name.strip() in metadata:
            raise ConfigError(f"--meta {name.strip()!r} is given twice: give each key once")
        metadata[name.strip()] = value
    return metadata


def _when(moment: dt.datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_keys(keys: Sequence[GatewayKey], fmt: str) -> str:
    """Render gateway keys as an aligned table or JSON: never a secret nor a hash."""
    if fmt == "json":
        return json.dumps(
            [
                {
                    "id": key.id,
                    "user": key.user,
                    "prefix": key.prefix,
                    "metadata": key.metadata,
                    "created_at": key.created_at.isoformat(),
                    "last_used_at": key.last_used_at and key.last_used_at.isoformat(),
                    "revoked_at": key.revoked_at and key.revoked_at.isoformat(),
                }
                for key in keys
            ],
            indent=2,
        )
    header = ["id", "user", "prefix", "created", "last_used", "revoked", "metadata"]
    cells = [header]
    for key in keys:
        labels = ",".join(f"{name}={value}" for name, value in key.metadata.items())
        cells.append(
            [
                key.id,
                key.user,
                key.prefix,
                _when(key.created_at),
                _when(key.last_used_at),
                _when(key.revoked_at),
                labels or "-",
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    if not keys:
        lines.append("(no gateway keys; create one with `bridgectl keys create --user NAME`)")
    return "\n".join(lines)


def _keys(args: argparse.Namespace) -> int:
    config = _load(args)
    metadata = parse_meta(args.meta) if args.keys_command == "create" else {}
    store = open_store(config.recording.database)
    try:
        if not isinstance(store, KeyStore):
            raise StoreError(
                f"the recording database {mask_url(config.recording.database)!r} cannot keep"
                " gateway keys: use a SQLite or PostgreSQL database for recording.database"
            )
        if args.keys_command == "create":
            try:
                secret, key = store.create_key(args.user, metadata)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            print(secret)
            print(
                f"Created key {key.id} ({key.prefix}) for user {key.user!r}. This is the only"
                " time the key is shown: store it now.",
                file=sys.stderr,
            )
            return 0
        if args.keys_command == "list":
            print(format_keys(store.list_keys(), args.format))
            if args.format == "table":
                print(
                    f"(last_used is noted at most once every {KEY_TOUCH_INTERVAL:g} s per"
                    " gateway worker)",
                    file=sys.stderr,
                )
            return 0
        return _revoke(store, args.id)
    finally:
        store.close()


def _revoke(store: KeyStore, reference: str) -> int:
    try:
        key = resolve_key(store.list_keys(), reference)
    except LookupError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 1
    if store.revoke_key(key.id):
        print(f"Revoked key {key.id} ({key.prefix}) of user {key.user!r}.")
        return 0
    print(f"Key {key.id} ({key.prefix}) was already revoked at {_when(key.revoked_at)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
