"""The Docker provider, one concern per module. Runs in the worker process (and `reaping` in the
supervisor's janitor child). Importing the package imports the Docker SDK.

* `engine`    connecting to the engine, the API version, labels and names, an engine error in words
* `images`    pulling a missing image, `image.build`
* `limits`    whether the job broke `limits.memory` (the engine) or `limits.pids` (its pids cgroup)
* `session`   the job container's shell, fed one line per step through the attach socket
* `steps`     a running step: by the session, or as an exec
* `tree`      trees on this machine: overlay (the tree wins), links kept, empty folders found
* `workspace` seeding the ephemeral volume, copying trees in and files out
* `reaping`   removing what dead runs left on the engine
* `provider`  `DockerProvider`, the `Provider` of jobs with an image
"""

from __future__ import annotations

from workers.providers.docker.engine import connect
from workers.providers.docker.provider import DockerProvider
from workers.providers.docker.reaping import reap_leftovers, reap_run

__all__ = ["DockerProvider", "connect", "reap_leftovers", "reap_run"]
