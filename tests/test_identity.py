from __future__ import annotations

import json

import pytest
from tests.support import FIXTURES

from agent.config import load
from agent.identity import local_identity, split_image, task_identity


def task(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("example.com:5000/team/app:1.2", ("example.com:5000/team/app", "1.2")),
        ("nginx", ("nginx", "latest")),
        ("example.com:5000/team/app", ("example.com:5000/team/app", "latest")),
        ("redis@sha256:" + "a" * 64, ("redis", "latest")),
        ("amazon/amazon-ecs-agent:v1.2@sha256:" + "b" * 64, ("amazon/amazon-ecs-agent", "v1.2")),
    ],
)
def test_split_image(image: str, expected: tuple[str, str]) -> None:
    assert split_image(image) == expected


def test_fargate_identity() -> None:
    ident = task_identity(load({}), task("fargate-2023.task.json"), environ={})
    tags = dict(ident.info_tags)
    arn = "arn:aws:ecs:ap-northeast-1:601427279990:task/akira-fargate-check-cluster/67cd8a22b533459696d4ccab5278e009"
    assert tags["ecs_cluster"] == "akira-fargate-check-cluster"  # a name, not the ARN the document has
    assert ident.launch_type == "FARGATE"
    assert ident.region == "ap-northeast-1"
    assert ident.availability_zone == "ap-northeast-1d"
    assert (ident.task_family, ident.task_revision) == ("akira-fargate-check", "1")
    assert ident.task_id == "67cd8a22b533459696d4ccab5278e009"
    assert tags["task_arn"] == ident.task_arn == arn
    assert "task_arn" not in dict(ident.tags)


def test_service_name_precedence() -> None:
    doc = {"TaskARN": "arn:aws:ecs:us-east-1:123:task/c/abc", "Family": "fam",
           "Group": "service:from-group", "ServiceName": "from-service-name", "Revision": "7"}
    config = load({})
    assert task_identity(load({"TASKLENS_SERVICE": "explicit"}), doc, environ={"DD_SERVICE": "dd"}).service == "explicit"
    assert task_identity(config, doc, environ={"DD_SERVICE": "dd"}).service == "dd"
    assert task_identity(config, doc, environ={}).service == "from-service-name"
    del doc["ServiceName"]
    assert task_identity(config, doc, environ={}).service == "from-group"
    doc["Group"] = "family:fam"
    assert task_identity(config, doc, environ={}).service == "fam"
    ident = task_identity(load({"TASKLENS_TAGS": "team:x,service:ignored"}), doc, environ={"DD_ENV": "prod"})
    assert dict(ident.tags) == {"service": "fam", "env": "prod", "task_family": "fam", "task_revision": "7",
                                "task_id": "abc", "ecs_cluster": "c", "region": "us-east-1", "team": "x"}


def test_pause_container_is_not_a_workload() -> None:
    ident = task_identity(load({}), task("fargate-v2-2017.task.json"), environ={})
    names = {dict(tags)["container_name"] for tags in ident.containers.values()}
    assert names == {"dd-agent", "redis"}


def test_not_a_task() -> None:
    with pytest.raises(ValueError):
        task_identity(load({}), {"Containers": []}, environ={})
    with pytest.raises(ValueError):
        task_identity(load({}), ["not", "a", "task"], environ={})  # type: ignore[arg-type]


def test_local_identity_defaults_to_hostname() -> None:
    import socket

    assert local_identity(load({}), environ={}).service == socket.gethostname()
    assert local_identity(load({}), environ={"DD_SERVICE": "svc"}).service == "svc"


def test_containers_of_the_wrong_shape() -> None:
    doc = {"TaskARN": "arn:aws:ecs:us-east-1:123:task/c/abc", "Containers": {"not": "a list"}}
    with pytest.raises(ValueError, match="Containers"):
        task_identity(load({}), doc, environ={})
    doc["Containers"] = [None, "x", {"DockerId": "d1", "Name": "app", "Image": "app:1"}]
    assert task_identity(load({}), doc, environ={}).containers == {
        "d1": (("container_name", "app"), ("image", "app"), ("image_tag", "1"))}
