"""A simulated service on a real broker: several tasks, each a sidecar (its own task id) and a worker
holding one job, on one beanstalkd tube. Tasks start and stop during the test; every sidecar's backlog
per task follows exactly, and the heartbeats count the running tasks."""

from __future__ import annotations

import greenstalk
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.scaling.heartbeat import Heartbeat
from agent.sinks.prometheus import PrometheusSink
from integrations.queues.source import QueueSource
from tests.integrations.queues.support import Clock

JOBS = 24


class Task:
    def __init__(self, n: int, port: int, tube: str, config: Config, clock: Clock) -> None:
        identity = Identity(service="thumbs", ecs_cluster="prod", task_id=f"task-{n}")
        self.hub = Hub(identity)
        self.prometheus = PrometheusSink(self.hub.metrics, self.hub.pull)
        self.hub.add_sink(self.prometheus)
        self.source = QueueSource(config, self.hub, f"beanstalk://127.0.0.1:{port}/{tube}", clock=clock)
        self.heartbeat = Heartbeat(self.hub)
        self.heartbeat.beat()
        self.worker = greenstalk.Client(("127.0.0.1", port), watch=tube)
        self.job = self.worker.reserve(timeout=2)  # a job in flight

    def exported(self) -> dict[str, tuple[dict[str, str], float]]:
        text = generate_latest(self.prometheus.registry).decode()
        return {s.name: (s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
                if s.name.startswith(("queue_backlog", "queue_tasks", "tasklens_scaling"))}

    async def stop(self) -> None:
        self.worker.close()  # beanstalkd puts the reserved job back: the backlog stays
        await self.source.probe.close()


async def test_backlog_per_task_follows_the_running_tasks(beanstalkd, unique):
    config = Config(queue_poll_interval=0.2, scaling_smoothing_window=4.0)
    clock = Clock()
    with greenstalk.Client(("127.0.0.1", beanstalkd.port), use=unique) as producer:
        for i in range(JOBS):
            producer.put(f"job {i}")
    tasks = [Task(n, beanstalkd.port, unique, config, clock) for n in range(3)]
    try:
        for change in ("start", "add", "stop two", "add"):
            if change == "add":
                tasks.append(Task(len(tasks) + 10, beanstalkd.port, unique, config, clock))
            elif change == "stop two":
                for task in tasks[:2]:
                    await task.stop()
                tasks = tasks[2:]
            for _ in range(5):  # 5 polls 1 s apart: the 4 s window fills
                for task in tasks:
                    assert await task.source.poll(), task.source.last_error
                clock.advance(1.0)
            running = len(tasks)
            heartbeats = [t.exported()["tasklens_scaling_task_heartbeat"] for t in tasks]
            # what CloudWatch's SampleCount (and Prometheus' count) of the heartbeat sees
            assert len(heartbeats) == running and all(value == 1.0 for _, value in heartbeats)
            assert {labels["task_id"] for labels, _ in heartbeats} == {t.hub.identity.task_id for t in tasks}
            for task in tasks:
                exported = task.exported()
                values = {name: value for name, (labels, value) in exported.items() if name.startswith("queue_")}
                assert values == {
                    "queue_backlog": JOBS, "queue_backlog_smoothed": JOBS, "queue_tasks_estimate": running,
                    "queue_backlog_per_task": JOBS / running, "queue_backlog_per_task_smoothed": JOBS / running,
                }, (change, task.hub.identity.task_id)
                labels = exported["queue_backlog_per_task"][0]
                assert (labels["queue"], labels["service"], labels["ecs_cluster"]) == (unique, "thumbs", "prod")
    finally:
        for task in tasks:
            await task.stop()


async def test_rabbitmq_service_counts_unacked_messages_and_consumers(rabbitmq_management, unique):
    """The same on RabbitMQ through the management API: each worker is a consumer holding one
    unacknowledged message (in flight), so the backlog stays at every message while the consumers
    (the local task estimate) follow the tasks."""
    import aio_pika

    from tests.integrations.queues.support import eventually

    amqp = "amqp://guest:guest@127.0.0.1:5672/"
    config = Config(queue_poll_interval=0.2, scaling_smoothing_window=4.0)
    clock = Clock()
    admin = await aio_pika.connect(amqp)
    channel = await admin.channel()
    await channel.declare_queue(unique)
    for i in range(JOBS):
        await channel.default_exchange.publish(aio_pika.Message(f"job {i}".encode()), routing_key=unique)
    url = f"{amqp}%2F?queue={unique}&management={rabbitmq_management}"
    sidecars: list[tuple[Hub, PrometheusSink, QueueSource, aio_pika.abc.AbstractConnection]] = []

    async def start(n: int) -> None:
        hub = Hub(Identity(service="invoices", ecs_cluster="prod", task_id=f"task-{n}"))
        sink = PrometheusSink(hub.metrics, hub.pull)
        hub.add_sink(sink)
        worker = await aio_pika.connect(amqp)
        worker_channel = await worker.channel()
        await worker_channel.set_qos(prefetch_count=1)
        held: list[object] = []

        async def hold(message: object) -> None:
            held.append(message)

        await (await worker_channel.get_queue(unique)).consume(hold, no_ack=False)
        await eventually(lambda: _true(len(held) == 1))
        sidecars.append((hub, sink, QueueSource(config, hub, url, clock=clock), worker))

    try:
        for n in range(3):
            await start(n)
        for change in ("start", "add", "stop two"):
            if change == "add":
                await start(10)
            elif change == "stop two":
                for _, _, source, worker in sidecars[:2]:
                    await worker.close()  # its unacked message goes back to ready
                    await source.probe.close()
                del sidecars[:2]
            running = len(sidecars)

            async def settled(running: int = running, change: str = change) -> bool:  # stats refresh every few s
                for _, sink, source, _ in sidecars:
                    assert await source.poll(), source.last_error
                    text = generate_latest(sink.registry).decode()
                    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                              if s.name in ("queue_backlog", "queue_tasks_estimate", "queue_backlog_per_task")}
                    assert values == {"queue_backlog": JOBS, "queue_tasks_estimate": running,
                                      "queue_backlog_per_task": JOBS / running}, (change, values)
                return True

            await eventually(settled, timeout=30.0, interval=0.5)
    finally:
        for _, _, source, worker in sidecars:
            await worker.close()
            await source.probe.close()
        await channel.queue_delete(unique)
        await admin.close()


async def _true(value: bool) -> bool:
    return value


async def test_sqs_backlog_counts_messages_in_flight(moto_port, aws_env, unique):
    """SQS (moto's server, the real AWS client): received, undeleted messages are in flight and stay
    in the backlog of every task; SQS has no consumer count, so the per-task value is left to
    CloudWatch (the heartbeats) and is not reported locally."""
    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{moto_port}")
    queue_url = sqs.create_queue(QueueName=unique)["QueueUrl"]
    for i in range(JOBS):
        sqs.send_message(QueueUrl=queue_url, MessageBody=f"job {i}")
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=5, VisibilityTimeout=600)["Messages"]
    config = Config(queue_poll_interval=0.2, scaling_smoothing_window=4.0)
    clock = Clock()
    url = f"sqs://{unique}?region=us-east-1&endpoint=http://127.0.0.1:{moto_port}"
    sidecars = []
    for n in range(2):
        hub = Hub(Identity(service="orders", ecs_cluster="prod", task_id=f"task-{n}"))
        sink = PrometheusSink(hub.metrics, hub.pull)
        hub.add_sink(sink)
        sidecars.append((sink, QueueSource(config, hub, url, clock=clock)))
    try:
        for _ in range(5):
            for _, source in sidecars:
                assert await source.poll(), source.last_error
            clock.advance(1.0)
        for sink, _ in sidecars:
            text = generate_latest(sink.registry).decode()
            values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                      if s.name.startswith(("queue_backlog", "queue_tasks", "queue_depth", "queue_in_flight"))}
            assert values == {"queue_depth": JOBS - len(received), "queue_in_flight": len(received),
                              "queue_backlog": JOBS, "queue_backlog_smoothed": JOBS}
    finally:
        for _, source in sidecars:
            await source.probe.close()
