# Local stand-in for prom/prometheus (scripts/podman-compose.py), from Debian's package, for
# machines that cannot pull from a container registry. Docker users get the real image.
ARG BASE_IMAGE=debian:bookworm-slim
# checkov:skip=CKV_DOCKER_7: FROM takes the BASE_IMAGE argument, whose default is a tagged image
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
# no HTTP client in the image: the base's python asks /-/ready
HEALTHCHECK --interval=10s --timeout=3s CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9090/-/ready', timeout=2)"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
