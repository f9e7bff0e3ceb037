"""The public API is exactly what bridge/__init__.py lists, and says it is bridge's."""

from __future__ import annotations

import bridge


def test_all_is_sorted_and_complete() -> None:
    public = sorted(name for name in dir(bridge) if not name.startswith("_"))
    assert bridge.__all__ == sorted(bridge.__all__)
    # Modules imported as a side effect are not API; everything else public must be listed.
    modules = {name for name in public if type(getattr(bridge, name)).__name__ == "module"}
    helpers = {"annotations", "contextlib", "importlib", "TYPE_CHECKING", "Any"}
    assert sorted(set(public) - modules - helpers) == bridge.__all__


def test_the_command_line_does_not_load_the_gateway() -> None:
    """``bridgectl --help``, ``keys`` and ``usage`` need the configuration and the stores
    only: the engine, Quart, hypercorn and the MCP library load when something runs."""
    import subprocess
    import sys

    heavy = ("bridge.embed", "bridge.core.engine", "quart", "hypercorn", "mcp")
    probe = (
        f"import sys, bridge.process.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr
    assert bridge.open_bridge.__module__ == "bridge"  # and they still load on first use


def test_public_classes_present_themselves_as_bridge() -> None:
    for name in bridge.__all__:
        obj = getattr(bridge, name)
        if isinstance(obj, type):
            assert obj.__module__ == "bridge", name


def test_the_recording_package_exports_every_store() -> None:
    """Every name in bridge.recording's __all__ resolves and the stores are all there;
    PostgresStore is loaded only when asked for (psycopg loads libpq)."""
    import subprocess
    import sys

    import bridge.recording as recording
    from bridge.recording.postgres import PostgresStore

    for name in recording.__all__:
        assert getattr(recording, name) is not None, name
    assert {"MemoryStore", "SQLiteStore", "PostgresStore"} <= set(recording.__all__)
    assert recording.PostgresStore is PostgresStore
    probe = "import sys, bridge.recording; print('psycopg' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert loaded.stdout.strip() == "False", loaded.stderr


def test_the_embedding_api_does_not_load_the_web_framework() -> None:
    """A Trio program that embeds the gateway (``open_bridge``, ``Bridge.handle``) loads
    neither Quart nor hypercorn: ``Bridge.asgi_app`` imports them when asked for."""
    import subprocess
    import sys

    probe = (
        "import sys, bridge; bridge.open_bridge; "
        "print(sorted(m for m in ('quart', 'quart_trio', 'hypercorn') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr
