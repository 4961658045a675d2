"""Job providers behind one Protocol (`base.Provider`), registered in a literal dict.

`docker` is imported lazily so a host-only run never pays for the Docker SDK.
"""

from __future__ import annotations

from workers.providers.base import Provider


def get_provider(name: str) -> Provider:
    if name == "host":
        from workers.providers.host import HostProvider

        return HostProvider()
    if name == "docker":
        from workers.providers.docker import DockerProvider

        return DockerProvider()
    if name == "fake":
        from workers.providers.fake import FakeProvider

        return FakeProvider()
    raise KeyError(f"unknown provider {name!r}")


PROVIDERS: dict[str, str] = {
    "host": "workers.providers.host:HostProvider",
    "docker": "workers.providers.docker:DockerProvider",
    "fake": "workers.providers.fake:FakeProvider",
}
