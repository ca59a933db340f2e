# otagw: Matter OTA Provider + Zigbee OTA server on one update core.
# Build: docker build -t otagw .     Run: see the Docker section of README.md
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: wheels for otagw and exactly the locked dependencies (incl. the chip SDK, Linux x86_64/aarch64 only)
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# constraints/image.txt is the whole install, pinned (scripts/lock-image): --no-deps keeps out what a dependency
# declares without needing it (the lock's header names it). Dependencies first: a code change reuses this layer.
COPY constraints/image.txt ./constraints/
# The chip SDK's wheel ships its native library with full debug info (about 75 of its 110 MB): strip that (code,
# dynamic symbols and the symbol table stay, so native backtraces still name functions) and repack the wheel
# (`wheel pack` rewrites RECORD, so the installed files match their hashes). binutils and wheel stay in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends "binutils=2.40*" \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir "wheel==0.45.1"
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels -r constraints/image.txt \
    && mkdir /tmp/unpacked \
    && python3 -m wheel unpack --dest /tmp/unpacked /wheels/home_assistant_chip_core-*.whl \
    && rm /wheels/home_assistant_chip_core-*.whl \
    && find /tmp/unpacked -name '*.so' -exec strip --strip-debug {} + \
    && python3 -m wheel pack --dest-dir /wheels /tmp/unpacked/home_assistant_chip_core-* \
    && rm -rf /tmp/unpacked
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && sha256sum /wheels/*.whl > /wheels.sha256

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

# The wheels are bind-mounted from the build stage, never copied into a layer; --no-index --no-deps: exactly the
# locked wheels built above (constraints/image.txt pins every one) and otagw itself. Their checksums are copied
# first: buildah (podman build) caches a RUN with a bind mount without looking at the mounted files, so without
# this COPY (whose cache key is the content) a code change would reuse the stale install layer.
COPY --from=build /wheels.sha256 /usr/local/share/otagw/wheels.sha256
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl

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
