# Local stand-in for the official redis image (scripts/podman-compose.py), from Debian's package,
# for machines that cannot pull from a container registry. Docker users get the real image.
ARG BASE_IMAGE=debian:bookworm-slim
# checkov:skip=CKV_DOCKER_7: FROM takes the BASE_IMAGE argument, whose default is a tagged image
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown 65534:65534 /data
WORKDIR /data
USER 65534:65534
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s CMD ["redis-cli", "ping"]
# as the official image: no protected mode (the network is the container's), no config file
CMD ["redis-server", "--protected-mode", "no", "--dir", "/data"]
