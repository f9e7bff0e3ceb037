"""Another gateway to measure side by side with bridge: a pinned LiteLLM proxy, stateless.

``make bench-peers`` installs ``litellm[proxy]==`` :data:`LITELLM_VERSION` into its own virtual
environment (:data:`LITELLM_VENV`, git-ignored), so none of its ~120 dependencies can touch
bridge's venv. :func:`litellm_process` starts it in front of the same mock upstream the
gateway uses, pinned to the gateway's core, with one worker.

Rules, so the comparison measures the proxy and nothing else:

* Stateless: no ``DATABASE_URL`` (no key, spend or error tables), no master key (like the
  gateway's auth mode ``none``; LiteLLM refuses to start without one unless told it may).
* Nothing leaves loopback: the model cost map, Anthropic beta headers, blog posts, policy
  templates and auto-router presets are read from the package (``LITELLM_LOCAL_*``), telemetry
  is off, and ``LITELLM_MODE=PRODUCTION`` stops it reading a ``.env`` from the working directory.
* Minimal logging (``LITELLM_LOG=ERROR`` also silences uvicorn's access log), like the
  gateway's ``log_level = 'WARNING'``.
* Client ``x-*`` headers are forwarded upstream (``forward_client_headers_to_llm_api``), so
  the mock's ``x-mock-scenario`` and ``x-mock-pace-ms`` pick the same answer for all sides.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from benchmarks.processes import GATEWAY_CPU, Served, free_port, served_process

__all__ = [
    "COMPANIONS",
    "LITELLM_VENV",
    "LITELLM_VERSION",
    "PEER_NAME",
    "install",
    "litellm_config",
    "litellm_process",
    "main",
]

LITELLM_VERSION: Final = "1.108.6"
"""The pinned release: a recent one whose ``[proxy]`` extra resolves on PyPI for Python 3.11
(1.108.8 and later pin a ``litellm-proxy-extras`` PyPI does not have; 1.110 needs a
``litellm-proxy`` package it does not have either). Not the compromised 1.82.7 or 1.82.8;
no 1.107.x is published."""

COMPANIONS: Final = ("opentelemetry-sdk==1.45.2",)
"""Installed next to it. Without ``opentelemetry-sdk`` (not in the ``proxy`` extra) LiteLLM's
auth step imports its OTel logger on every request, fails, and retries on the next: profiled
here, that doubled its CPU per request. The peer is measured at its best, not at a packaging
slip."""

LITELLM_VENV: Final = Path(__file__).parent / ".peers" / "litellm-venv"
"""Its own virtual environment, created by :func:`install` (``make bench-peers``)."""

PEER_NAME: Final = f"LiteLLM {LITELLM_VERSION}"
"""How reports name the peer."""

_ENV: Final = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_TELEMETRY_DISABLED": "true",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
}

_SCRUBBED: Final = ("DATABASE_URL", "LITELLM_", "ANTHROPIC_", "OPENAI_", "REDIS_", "OTEL_")
"""Variables of the caller's environment that could give the peer state or a destination."""


def litellm_config(upstream_port: int) -> str:
    """The proxy's YAML: the benchmark bodies' two models, both on the mock.

    ``claude-sonnet-4-6`` goes to the mock's Anthropic Messages API (``anthropic/``), ``gpt-5``
    to its OpenAI API (``openai/``, chat and Responses). The keys are the mock's test keys.
    """
    base = f"http://127.0.0.1:{upstream_port}"
    return (
        "model_list:\n"
        "  - model_name: claude-sonnet-4-6\n"
        "    litellm_params:\n"
        "      model: anthropic/claude-sonnet-4-6\n"
        f"      api_base: {base}\n"
        "      api_key: sk-ant-bench-key-000000000000\n"
        "      max_retries: 0\n"
        "  - model_name: gpt-5\n"
        "    litellm_params:\n"
        "      model: openai/gpt-5\n"
        f"      api_base: {base}/v1\n"
        "      api_key: sk-bench-key-000000000000\n"
        "      max_retries: 0\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  num_retries: 0\n"
        "general_settings:\n"
        "  forward_client_headers_to_llm_api: true\n"
        "  disable_spend_logs: true\n"
        "  disable_error_logs: true\n"
    )


def _environment() -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    return {**kept, **_ENV}


@contextmanager
def litellm_process(upstream_port: int, *, cpu: int | None = GATEWAY_CPU) -> Iterator[Served]:
    """The LiteLLM proxy (one uvicorn worker) in front of the mock, pinned like the gateway."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if not executable.exists():
        raise RuntimeError(
            f"{executable} is missing: run `make bench-peers`, which installs "
            f"litellm[proxy]=={LITELLM_VERSION} there"
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bridge-bench-peer-") as scratch:
        config = Path(scratch) / "litellm.yaml"
        config.write_text(litellm_config(upstream_port))
        args = [
            str(executable),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]
        with served_process(
            args,
            port,
            cpu=cpu,
            env=_environment(),
            cwd=Path(scratch),
            log=Path(scratch) / "litellm.log",
            start_timeout=120.0,
        ) as served:
            yield served


def install() -> None:
    """Create :data:`LITELLM_VENV` if missing and install the pinned release into it.

    Uses the ``uv`` of the venv running this (bridge's, where ``make install`` put it);
    a second run only checks that the pinned version is there.
    """
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        raise RuntimeError(f"{uv} is missing: run `make install` first")
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(
            [str(uv), "venv", "--quiet", "--python", sys.executable, str(LITELLM_VENV)],
            check=True,
        )
    requirements = [f"litellm[proxy]=={LITELLM_VERSION}", *COMPANIONS]
    subprocess.run(
        [str(uv), "pip", "install", "--quiet", "--python", str(python), *requirements],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["install"], help="install: set up the peer's venv")
    parser.parse_args()
    install()


if __name__ == "__main__":
    main()
