"""The ``bridge`` command line.

``bridge serve``, ``bridge check-config``, ``bridge usage`` and
``bridge mock-upstream``. Configuration errors print one clear line and exit 2;
nothing prints a traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import logging
import re
import sys
from collections.abc import Sequence
from functools import partial

import trio

from bridge.config import Config, ConfigError, load_config, render_config
from bridge.recording.store import GROUP_BY, StoreError, UsageRow, open_store

__all__ = ["main"]

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description="An AI gateway on Trio.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="path to bridge.toml")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")

    check = commands.add_parser("check-config", help="validate and print the configuration")
    check.add_argument("--config", help="path to bridge.toml")

    usage = commands.add_parser("usage", help="usage report from the recording database")
    usage.add_argument("--config", help="path to bridge.toml")
    usage.add_argument("--since", help="e.g. 24h, 7d, or a date such as 2026-11-01")
    usage.add_argument(
        "--by",
        action="append",
        choices=GROUP_BY,
        help="group by this column (repeat to combine; default: user)",
    )
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")

    mock = commands.add_parser("mock-upstream", help="a deterministic fake provider for demos")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9090)
    return parser


def parse_since(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``24h``/``7d``-style durations back from now, or an ISO date or datetime (UTC)."""
    now = now or dt.datetime.now(dt.UTC)
    if match := _DURATION.match(text.strip()):
        return now - dt.timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since must be a duration like 24h or 7d, or a date like 2026-11-01, got {text!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


_COLUMNS = (
    "interceptions",
    "failures",
    "input",
    "output",
    "cache_read",
    "cache_write",
    "reasoning",
    "tool_calls",
)


def format_usage(rows: Sequence[UsageRow], by: Sequence[str], fmt: str) -> str:
    """Render a usage report as an aligned table, JSON or CSV."""
    records = [
        {**{key: row.group.get(key, "") for key in by}, **{c: getattr(row, c) for c in _COLUMNS}}
        for row in rows
    ]
    header = [*by, *_COLUMNS]
    if fmt == "json":
        return json.dumps(records, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue().rstrip("\n")
    cells = [header, *[[str(r[h]) for h in header] for r in records]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i < len(by) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    if not records:
        lines.append("(no interceptions recorded in this period)")
    return "\n".join(lines)


def _load(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bridge`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check-config":
            print(render_config(_load(args)), end="")
            return 0
        if args.command == "usage":
            return _usage(args)
        if args.command == "mock-upstream":
            from bridge.mock_upstream import main as mock_main

            mock_main(args.port, args.host)
            return 0
    except (ConfigError, StoreError) as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 2


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bridge.server import serve

    config = _load(args)
    if args.host is not None or args.port is not None:
        server = replace(
            config.server,
            host=args.host if args.host is not None else config.server.host,
            port=args.port if args.port is not None else config.server.port,
        )
        config = replace(config, server=server)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, config))
            for url in binds:
                logging.getLogger("bridge").info("bridge listening on %s", url)

    trio.run(run)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
