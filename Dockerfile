# otagw: Matter OTA Provider + Zigbee OTA server on one update core.
# Build: docker build -t otagw .     Run: see the Docker section of README.md
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: wheels for otagw and its dependencies (incl. the chip SDK, Linux x86_64/aarch64 only)
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[matter]"

# ---- runtime
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="otagw" \
      org.opencontainers.image.description="Multi-protocol OTA firmware-update gateway (Matter + Zigbee)" \
      org.opencontainers.image.licenses="Apache-2.0"

# native libraries the chip SDK loads, nothing else: libnl (its network layer) and libglib2.0-0 (its
# _ChipDeviceCtrl.so links libgio-2.0). Pinned to the upstream versions of Debian bookworm (glob on the Debian
# revision, so a security update still installs instead of failing the build).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       "libnl-3-200=3.7.*" "libnl-route-3-200=3.7.*" "libglib2.0-0=2.74.*" \
    && rm -rf /var/lib/apt/lists/*

# unprivileged user. Serial Zigbee radios (--device): the device node keeps the HOST's group id, which is not
# always the image's dialout (20); pass it at run time: --group-add "$(stat -c %g /dev/ttyUSB0)".
RUN groupadd --system --gid 10001 otagw \
    && useradd --system --uid 10001 --gid otagw --groups dialout --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin otagw \
    && mkdir -p /data /etc/otagw \
    && chown otagw:otagw /data \
    && chmod 0700 /data

COPY --from=build /wheels /wheels
# --no-index: only the wheels built above, which pyproject.toml pins where it matters (zigpy, bellows, chip)
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links=/wheels "otagw[matter]" \
    && rm -rf /wheels

# Container config: data in the /data volume. The API listens on loopback by default, so `--network host` does not
# put it on every host interface; choose the address at run time with OTAGW_API_LISTEN (published ports:
# -e OTAGW_API_LISTEN=0.0.0.0:8480 -p 127.0.0.1:8480:8480). The API token is generated into /data/api-token on
# first start unless OTAGW_API_TOKEN is set. Matter: the chip SDK's fixed /data/chip_*.ini land in the volume
# (owned by uid 10001: no root, no capability needed; see adapters/matter/fabric/datadir.py).
RUN printf '%s\n' \
      'data_dir: /data' \
      'api:' \
      '  listen: 127.0.0.1:8480' \
      'matter:' \
      '  port: 5540' \
      > /etc/otagw/otagw.yaml
ENV OTAGW_CONFIG=/etc/otagw/otagw.yaml \
    PYTHONUNBUFFERED=1

# uid only (no :gid): the runtime then also applies the user's supplementary groups from /etc/group
USER 10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8480/tcp 5540/udp

# Readiness (/healthz: 503 while an enabled adapter is not running). `otagw health` probes the address of the
# config's api.listen (OTAGW_CONFIG), so the check follows a changed port; `otagw health --live` is liveness only.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["otagw", "health", "--timeout", "4"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["otagw"]
CMD ["run"]
