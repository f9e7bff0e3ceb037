"""The public API is exactly what bridge/__init__.py lists, and says it is bridge's."""

from __future__ import annotations

import bridge


def test_all_is_sorted_and_complete() -> None:
    public = sorted(name for name in vars(bridge) if not name.startswith("_"))
    assert bridge.__all__ == sorted(bridge.__all__)
    # Modules imported as a side effect are not API; everything else public must be listed.
    modules = {name for name in public if type(getattr(bridge, name)).__name__ == "module"}
    assert sorted(set(public) - modules - {"annotations", "contextlib"}) == bridge.__all__


def test_public_classes_present_themselves_as_bridge() -> None:
    for name in bridge.__all__:
        obj = getattr(bridge, name)
        if isinstance(obj, type):
            assert obj.__module__ == "bridge", name
