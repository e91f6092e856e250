"""Who this task is: resolved from the configuration and the ECS task metadata, as tags.

Resolved once at start and again on every metadata poll. Pure functions over the `/task` JSON.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import Config, datadog_fallback, hostname
from agent.model import Tags

PAUSE_CONTAINER = "~internal~ecs~pause"
# the keys of the tags every exported series carries (`Identity.tags`, in this order), and `info_tags`' one more
TAG_KEYS = ("service", "env", "version", "ecs_cluster", "task_family", "task_revision", "task_id",
            "availability_zone", "region", "launch_type")
INFO_TAG_KEYS = TAG_KEYS + ("task_arn",)
# ECS names (cluster, family, container, image repository and tag) are at most 255 characters, an ARN
# at most 2048. A longer value from the metadata endpoint is cut there: each is a label of every series.
MAX_NAME = 255
MAX_ARN = 2048
# a task definition holds at most 10 containers, and ECS adds a few (pause, Service Connect): a task
# listing more is not a task, and thousands of them fit in the body cap (seconds of the event loop)
MAX_CONTAINERS = 100


def _text(value: Any, limit: int = MAX_NAME) -> str:
    return str(value or "")[:limit]


def split_image(image: str) -> tuple[str, str]:
    """`example.com:5000/team/app:1.2` -> (`example.com:5000/team/app`, `1.2`); no tag -> `latest`."""
    image = image.split("@", 1)[0]  # a digest is not a tag
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1:] or "latest"
    return image, "latest"


def is_workload(container: Mapping[str, Any]) -> bool:
    """The pause container (and any CNI_PAUSE) only holds the network: not a workload."""
    return container.get("Name") != PAUSE_CONTAINER and container.get("Type", "NORMAL") != "CNI_PAUSE"


def distinct_containers(containers: Any) -> tuple[list[Any], int]:
    """A `/task` Containers list with each DockerId kept once (its first entry), and how many later
    entries were left out. Both entries of a repeated DockerId read the same stats: counting both
    would double the task's totals. Entries without a string DockerId are kept as they are."""
    if not isinstance(containers, list):
        return [], 0
    kept: list[Any] = []
    seen: set[str] = set()
    for container in containers:
        docker_id = container.get("DockerId") if isinstance(container, Mapping) else None
        if isinstance(docker_id, str):
            if docker_id in seen:
                continue
            seen.add(docker_id)
        kept.append(container)
    return kept, len(containers) - len(kept)


def container_tags(container: Mapping[str, Any]) -> Tags:
    repo, tag = split_image(str(container.get("Image") or ""))
    return (("container_name", _text(container.get("Name"))), ("image", repo[:MAX_NAME]), ("image_tag", tag[:MAX_NAME]))


@dataclass(frozen=True)
class Identity:
    service: str
    env: str = ""
    version: str = ""
    ecs_cluster: str = ""
    task_family: str = ""
    task_revision: str = ""
    task_id: str = ""
    task_arn: str = ""
    availability_zone: str = ""
    region: str = ""
    launch_type: str = ""
    extra: Tags = ()
    # DockerId -> that container's tags, for StatsD origin detection (`|c:<id>`)
    containers: Mapping[str, Tags] = field(default_factory=dict)
    local: bool = False

    @property
    def tags(self) -> Tags:
        """The tags every exported series carries (empty values left out)."""
        base = tuple((k, v) for k in TAG_KEYS if (v := getattr(self, k)))
        # extra tags from configuration add to the identity; they do not replace it
        keys = {k for k, _ in base}
        return base + tuple(kv for kv in self.extra if kv[0] not in keys)

    @property
    def added_tags(self) -> Tags:
        """Every pair the hub may add to a worker's series: the task's tags, and each container's (for a
        StatsD line whose `c:` names it)."""
        return self.tags + tuple(pair for tags in self.containers.values() for pair in tags)

    @property
    def info_tags(self) -> Tags:
        return self.tags + ((("task_arn", self.task_arn),) if self.task_arn else ())

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.info_tags)
        d["local_mode"] = self.local
        d["containers"] = {docker_id: dict(tags) for docker_id, tags in self.containers.items()}
        return d


def _explicit(config: Config, environ: Mapping[str, str]) -> tuple[str, str, str]:
    """Service, env and version from the settings, else from `DD_*` when those are valid names."""
    return (
        config.service or datadog_fallback(environ, "DD_SERVICE")[0],
        config.env or datadog_fallback(environ, "DD_ENV")[0],
        config.version or datadog_fallback(environ, "DD_VERSION")[0],
    )


def local_identity(config: Config, environ: Mapping[str, str] | None = None) -> Identity:
    environ = os.environ if environ is None else environ
    service, env, version = _explicit(config, environ)
    return Identity(service=service or hostname(), env=env, version=version, extra=config.tags, local=True)


def _cluster_name(task: Mapping[str, Any], arn: str) -> str:
    """`Cluster` may be a name or an ARN; without it, the new-style task ARN `task/<cluster>/<id>` has it."""
    cluster = str(task.get("Cluster") or "")
    if cluster:
        return _text(cluster.rsplit("/", 1)[-1])
    parts = arn.split(":", 5)[-1].split("/")
    return _text(parts[1]) if len(parts) == 3 else ""


def task_identity(config: Config, task: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Identity:
    """Identity from a `/task` response. Raises ValueError when the document is not a task."""
    environ = os.environ if environ is None else environ
    if not isinstance(task, Mapping) or not isinstance(task.get("TaskARN"), str):
        raise ValueError("task metadata has no TaskARN")
    arn = task["TaskARN"]
    arn_fields = arn.split(":")
    region = arn_fields[3] if len(arn_fields) > 5 else ""
    group = str(task.get("Group") or "")
    family = str(task.get("Family") or "")
    service, env, version = _explicit(config, environ)
    service = _text(
        service
        or str(task.get("ServiceName") or "")
        or (group.removeprefix("service:") if group.startswith("service:") else "")
        or family
        or hostname()
    )
    containers = task.get("Containers", [])
    if not isinstance(containers, list):
        raise ValueError("task metadata Containers is not a list")
    if len(containers) > MAX_CONTAINERS:
        raise ValueError(f"task metadata lists {len(containers)} containers, more than a task can have ({MAX_CONTAINERS})")
    by_id = {
        str(c["DockerId"]): container_tags(c)
        for c in distinct_containers(containers)[0]
        if isinstance(c, Mapping) and c.get("DockerId") and is_workload(c)
    }
    return Identity(
        service=service,
        env=env,
        version=version,
        ecs_cluster=_cluster_name(task, arn),
        task_family=_text(family),
        task_revision=_text(task.get("Revision")),
        task_id=_text(arn.rsplit("/", 1)[-1]),
        task_arn=_text(arn, MAX_ARN),
        availability_zone=_text(task.get("AvailabilityZone")),
        region=_text(region),
        launch_type=_text(task.get("LaunchType")).upper(),
        extra=config.tags,
        containers=by_id,
    )
