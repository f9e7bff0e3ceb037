"""The API dump: every upstream request and response written to files, for debugging.

Off unless ``observability.dump_dir`` is set (docs/behaviour.md §10.3). The rules:

1. **Layout.** A bridged call is dumped under
   ``<dir>/<provider>/<model, "/" -> "-">/<unix-ms>-<interception id>`` and a passthrough call
   under ``<dir>/<provider>/passthrough/<unix-ms>-<path, "/" -> "-">-<4 hex>``; the files are
   that base plus ``.req.txt``, ``.resp.txt`` or ``.req_error.txt``. The model name and the
   path come from the client and must not choose where the gateway writes: each becomes one
   path component of at most 100 characters from ``A-Z a-z 0-9 . _ -`` (anything else,
   CR/LF and NUL included, is ``_``; a leading ``.`` is ``_``, so never ``.``/``..`` nor a
   hidden file; empty is ``_``).
2. **HTTP/1 format.** A request is ``METHOD URI HTTP/1.1``, its headers sorted by name
   (case-insensitively, stable), a blank line and the body; CRLF line ends, as on the wire.
   A JSON body is re-indented by two spaces with its tokens, key order and duplicate keys
   untouched, and ``Content-Length`` (if present) is rewritten to the indented size, so the
   file is itself a consistent request. A response is the status line, sorted headers, a
   blank line and the **raw** body bytes, appended chunk by chunk as they stream.
3. **Secrets never show.** Credential headers are masked with
   :func:`bridge.config.mask_secret`, keeping an ``Authorization`` scheme such as ``Bearer``
   readable; so is any header whose name ends in ``-key``, ``-token`` or ``-secret``, and
   anything in the request URI that looks like a key (``?key=...``). Bodies are dumped as sent.
4. **Never fatal.** A failure to write is logged on ``bridge.apidump`` with the path and the
   error, and the call returns normally: debugging output must not fail a user's request.
5. **Permissions.** Directories the dump creates are 0700 and files 0600, whatever the
   umask: dumps hold prompts and answers, only the gateway's own user may read them.

Every method that writes (:meth:`APIDump.write_request`, :meth:`APIDump.open_response`,
:meth:`APIDump.write_error`, :meth:`ResponseDump.write`) **blocks** on the file system: each
is one open, one write and one close, and no file stays open between calls (so a cancelled
request leaks no descriptor). Trio callers may wrap them in :func:`trio.to_thread.run_sync`.
:meth:`APIDump.request_path` and :meth:`APIDump.passthrough_path` only compute a path.
"""

from __future__ import annotations

import http
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from bridge.config import mask_secret
from bridge.telemetry.logs import redact_text

__all__ = [
    "REDACTED_REQUEST_HEADERS",
    "REDACTED_RESPONSE_HEADERS",
    "APIDump",
    "ResponseDump",
]

logger = logging.getLogger("bridge.apidump")

REDACTED_REQUEST_HEADERS: Final = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "cookie",
        "proxy-authorization",
        "x-amz-security-token",
        "x-bridge-key",
    }
)
"""Request headers (lower case) whose values are masked in a dump (docs/behaviour.md §10.3)."""

REDACTED_RESPONSE_HEADERS: Final = frozenset(
    {"set-cookie", "www-authenticate", "proxy-authenticate"}
)
"""Response headers (lower case) whose values are masked in a dump (docs/behaviour.md §10.3)."""

_SECRET_HEADER_SUFFIXES: Final = ("-key", "-token", "-secret")
_SCHEME_HEADERS: Final = frozenset({"authorization", "proxy-authorization"})

_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_CRLF: Final = b"\r\n"
_UNSAFE_CHARACTERS: Final = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME: Final = 100  # file systems allow 255 bytes a component; leave room for the rest


def _safe_name(name: str) -> str:
    """``name`` as one short path component (rule 1): ``/`` -> ``-``, other characters
    outside ``A-Za-z0-9._-`` -> ``_``, at most 100 characters, never ``.``/``..``/empty."""
    name = _UNSAFE_CHARACTERS.sub("_", name.replace("/", "-").replace("\\", "-"))[:_MAX_NAME]
    if name.startswith("."):
        name = "_" + name[1:]
    return name or "_"


def _mask_header(name: str, value: str, redacted: frozenset[str]) -> str:
    lower = name.lower()
    if lower not in redacted and not lower.endswith(_SECRET_HEADER_SUFFIXES):
        return value
    scheme, space, credential = value.strip().partition(" ")
    if lower in _SCHEME_HEADERS and space:
        return f"{scheme} {mask_secret(credential.strip())}"
    return mask_secret(value)


def _head(first_line: str, headers: Sequence[tuple[str, str]], redacted: frozenset[str]) -> bytes:
    lines = [first_line]
    for name, value in sorted(headers, key=lambda header: header[0].lower()):
        lines.append(f"{name}: {_mask_header(name, value, redacted)}")
    return ("\r\n".join(lines)).encode("utf-8", "backslashreplace") + _CRLF + _CRLF


def _indent_json(text: str) -> str:
    """Re-indent valid JSON by two spaces, keeping every token as written (like Go's
    ``json.Indent``): no re-encoding of numbers or strings, no reordering, no merging of
    duplicate keys. Empty ``{}`` and ``[]`` stay on one line."""
    out: list[str] = []
    depth = 0
    in_string = escaped = pending_open = False
    for char in text:
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char in " \t\r\n":
            continue
        if pending_open and char not in "]}":
            pending_open = False
            depth += 1
            out.append("\n" + "  " * depth)
        if char in "[{":
            out.append(char)
            pending_open = True
        elif char in "]}":
            if pending_open:
                pending_open = False
            else:
                depth -= 1
                out.append("\n" + "  " * depth)
            out.append(char)
        elif char == ",":
            out.append(",\n" + "  " * depth)
        elif char == ":":
            out.append(": ")
        else:
            out.append(char)
            in_string = char == '"'
    return "".join(out)


def _pretty_body(body: bytes) -> bytes | None:
    """The indented body if ``body`` is UTF-8 JSON, else ``None`` (dump it raw)."""
    if not body.strip():
        return None
    try:
        text = body.decode("utf-8")
        json.loads(text)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        return None
    return _indent_json(text).encode("utf-8")


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents, each 0700 regardless of the umask."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, _DIR_MODE)
        except FileExistsError:  # created concurrently by another dump: fine
            continue
        os.chmod(path, _DIR_MODE)


def _write_file(path: Path, data: bytes, *, append: bool = False) -> bool:
    """One open, write and close of ``path`` (mode 0600); log and return False on failure."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    try:
        _make_dirs(path.parent)
        fd = os.open(path, flags, _FILE_MODE)
        with open(fd, "wb", closefd=True) as file:
            os.fchmod(fd, _FILE_MODE)
            file.write(data)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        logger.warning(
            "api dump failed",
            extra={"path": str(path), "error": f"{type(exc).__name__}: {exc}"},
        )
        return False
    return True


def _with_suffix(base: Path, suffix: str) -> Path:
    # Not Path.with_suffix: the base name may contain dots (model "gpt-4.1").
    return base.with_name(base.name + suffix)


class ResponseDump:
    """The ``.resp.txt`` file of one response, its body appended as it streams.

    Made by :meth:`APIDump.open_response`, which has already written the status line and the
    headers. After a failed write, or after :meth:`close`, :meth:`write` does nothing: one
    failure is logged once, not once per chunk.
    """

    __slots__ = ("_open", "path")

    def __init__(self, path: Path, *, ok: bool) -> None:
        self.path = path
        self._open = ok

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` (raw bytes, as received). Blocks: one open/write/close."""
        if self._open and chunk:
            self._open = _write_file(self.path, chunk, append=True)

    def close(self) -> None:
        """Stop dumping this response. Holds no descriptor, so nothing else is released."""
        self._open = False

    def __enter__(self) -> ResponseDump:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class APIDump:
    """Writes dumps below one directory; see the module docstring for layout and rules.

    ``clock`` returns Unix time in seconds; it exists so that tests can fix file names.
    """

    __slots__ = ("_clock", "directory")

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self._clock = clock

    def _unix_ms(self) -> int:
        return int(self._clock() * 1000)

    def request_path(self, provider: str, model: str, interception_id: str) -> Path:
        """``<dir>/<provider>/<model, "/" -> "-">/<unix-ms>-<id>``; creates nothing."""
        name = _safe_name(f"{self._unix_ms()}-{interception_id}")
        return self.directory / _safe_name(provider) / _safe_name(model) / name

    def passthrough_path(self, provider: str, path: str) -> Path:
        """``<dir>/<provider>/passthrough/<unix-ms>-<path, "/" -> "-">-<4 hex>``; creates nothing.

        The random suffix tells apart passthrough calls to one path in one millisecond.
        """
        name = f"{self._unix_ms()}-{_safe_name(path)}-{secrets.token_hex(2)}"
        return self.directory / _safe_name(provider) / "passthrough" / name

    def write_request(
        self,
        base: Path,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> None:
        """Write ``<base>.req.txt``: the request as sent upstream. Blocks."""
        pretty = _pretty_body(body)
        if pretty is not None:
            body = pretty
            headers = [
                (name, str(len(pretty)) if name.lower() == "content-length" else value)
                for name, value in headers
            ]
        head = _head(f"{method} {redact_text(url)} HTTP/1.1", headers, REDACTED_REQUEST_HEADERS)
        _write_file(_with_suffix(base, ".req.txt"), head + body)

    def open_response(
        self, base: Path, status: int, headers: Sequence[tuple[str, str]]
    ) -> ResponseDump:
        """Write the head of ``<base>.resp.txt`` and return the dump to append the body to.

        Blocks. Never raises: if the head cannot be written the returned dump ignores writes.
        """
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        path = _with_suffix(base, ".resp.txt")
        head = _head(f"HTTP/1.1 {status} {reason}".rstrip(), headers, REDACTED_RESPONSE_HEADERS)
        return ResponseDump(path, ok=_write_file(path, head))

    def write_error(self, base: Path, error: str) -> None:
        """Write ``<base>.req_error.txt``: why the request never got a response. Blocks."""
        _write_file(_with_suffix(base, ".req_error.txt"), redact_text(error).encode("utf-8"))
