"""Endpoints and key prefixes, as every storage vendor's backend reads them.

Pure string functions with no client library behind them, so that a backend for another vendor
(Aliyun OSS, say) checks its options exactly as the S3 backends do without importing minio.
"""
from __future__ import annotations

from typing import Tuple
from urllib.parse import urlsplit

# The storage kinds Pilot 2 knows (the ``provider`` of an sts answer).
PROVIDERS = ("minio", "aws", "ali")


def split_endpoint(endpoint: str, *, key: str = "endpoint") -> Tuple[str, bool]:
    """``http://host:port`` to (``host:port``, secure). The scheme is required; ``key`` names
    the option in the ValueError raised for anything else."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"{key} must look like http://host:port or https://host, got {endpoint!r}")
    return parts.netloc, parts.scheme == "https"


def check_provider(provider: str) -> None:
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}")


def render_prefix(template: str, workspace_id: str) -> str:
    """The workspace's key prefix, without leading or trailing ``/``."""
    return template.format(workspace_id=workspace_id).strip("/")


def check_prefix_template(template: str) -> None:
    """ValueError unless ``template`` names ``{workspace_id}`` and nothing else, with no
    wildcard: a session policy built from the prefix must not reach another workspace."""
    try:
        sample = render_prefix(template, "ws")
    except (KeyError, IndexError, ValueError):
        raise ValueError("prefix_template may use only {workspace_id}") from None
    if "{workspace_id}" not in template or not sample or "*" in template or "?" in template:
        raise ValueError("prefix_template must contain {workspace_id} and no wildcards")
