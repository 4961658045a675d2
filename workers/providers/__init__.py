"""Job providers behind one Protocol (`base.Provider`), registered in a literal dict.

Modules are imported on first use, so a host-only run never pays for the Docker SDK.
"""

from __future__ import annotations

import importlib
from typing import cast

from workers.providers.base import Provider

PROVIDERS: dict[str, tuple[str, str]] = {
    "host": ("workers.providers.host", "HostProvider"),
    "docker": ("workers.providers.docker", "DockerProvider"),
    "fake": ("workers.providers.fake", "FakeProvider"),
    "remote": ("workers.providers.remote", "RemoteProvider"),  # spec §12: steps on a Ray cluster node
}


def get_provider(name: str) -> Provider:
    module_name, class_name = PROVIDERS[name]
    module = importlib.import_module(module_name)
    return cast(Provider, getattr(module, class_name)())
