# Local stand-in for prom/prometheus (scripts/podman-compose.py), from Debian's package, for
# machines that cannot pull from a container registry. Docker users get the real image.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends prometheus && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus/rules && chown 65534:65534 /prometheus \
    && rm -rf /var/lib/prometheus/metrics2 && ln -s /prometheus /var/lib/prometheus/metrics2
# as the official image: the binary as entrypoint (compose's `command` gives the flags), data in
# /prometheus (Debian's build defaults to /var/lib/prometheus/metrics2: linked there), run as nobody
WORKDIR /prometheus
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
