# fulfiller: the webhook receiver and workers in one container.
#
#   docker build -t fulfiller .
#   docker build --build-arg BASE=registry.example.com/python:3.11-slim-bookworm -t fulfiller .
#
# Needs BuildKit (docker build's default since Docker 23; DOCKER_BUILDKIT=1 before). The base is
# named once, below. Any Debian-based image whose `python3` is 3.11 or newer serves: the build
# stage makes the runtime venv with that interpreter and the final stage runs it from the same path.
# Behind a package mirror: --build-arg PIP_INDEX_URL=... and, for its CA, --secret id=pip_cert,src=FILE.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/sh", "-eu", "-c"]
# pip and the build backend live in a venv of their own (/opt/build-tools): the runtime venv
# (/opt/fulfiller) never gets pip at all. `pip-build` runs that pip, trusting the mirror's CA when
# one is given as the pip_cert secret. strip (binutils) takes the debug info out of the wheels'
# extension modules (most of uvloop's size).
RUN command -v strip >/dev/null || { apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils >/dev/null; } \
 && python3 -m venv /opt/build-tools \
 && printf '%s\n' '#!/bin/sh' \
      '[ -s /run/secrets/pip_cert ] && export PIP_CERT=/run/secrets/pip_cert' \
      '[ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL' \
      '[ -n "${PIP_EXTRA_INDEX_URL:-}" ] || unset PIP_EXTRA_INDEX_URL' \
      'exec /opt/build-tools/bin/python -m pip "$@"' > /usr/local/bin/pip-build \
 && chmod +x /usr/local/bin/pip-build \
 && python3 -m venv --without-pip /opt/fulfiller
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a change to the code reuses this layer.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip \
    python3 -c 'import pathlib, tomllib; p = tomllib.loads(pathlib.Path("pyproject.toml").read_text()); \
pathlib.Path("/tmp/build-req.txt").write_text("\n".join(p["build-system"]["requires"])); \
pathlib.Path("/tmp/req.txt").write_text("\n".join(p["project"]["dependencies"]))' \
 && pip-build install -q -r /tmp/build-req.txt \
 && pip-build --python /opt/fulfiller/bin/python install -q -r /tmp/req.txt \
 # Only Drive v3 is called: the other APIs' discovery documents are most of the venv's size.
 && find /opt/fulfiller/lib/python3*/site-packages/googleapiclient/discovery_cache/documents \
      -type f ! -name drive.v3.json -delete \
 && find /opt/fulfiller -name '*.so*' -type f | while read -r lib; do \
      if readelf -S "$lib" | grep -q '\.debug_info'; then strip --strip-debug "$lib"; fi; done
COPY README.md ./
COPY src ./src
RUN pip-build wheel -q --no-deps --no-build-isolation -w /wheels . \
 && pip-build --python /opt/fulfiller/bin/python install -q --no-deps /wheels/*.whl \
 && test -f /opt/fulfiller/lib/python3*/site-packages/googleapiclient/discovery_cache/documents/drive.v3.json \
 && ! /opt/fulfiller/bin/python -c 'import pip' 2>/dev/null \
 && /opt/fulfiller/bin/python -c 'import fulfiller.cli, googleapiclient.discovery'
COPY scripts/container/healthcheck.py /opt/fulfiller/healthcheck.py

FROM ${BASE}
SHELL ["/bin/sh", "-eu", "-c"]
# libmagic sniffs masters' real types; the official python images lack it. Apt's lists go in the same layer.
RUN if ! ldconfig -p | grep -q 'libmagic\.so\.1'; then \
      apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libmagic1 >/dev/null \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log; \
    fi \
 && groupadd --gid 10001 fulfiller \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/fulfiller --no-create-home \
      --shell /usr/sbin/nologin fulfiller \
 && mkdir -p /var/lib/fulfiller /etc/fulfiller \
 && chown fulfiller:fulfiller /var/lib/fulfiller
COPY --from=build /opt/fulfiller /opt/fulfiller
ENV PATH=/opt/fulfiller/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FULFILLER_CONFIG=/etc/fulfiller/config.yaml
USER fulfiller
WORKDIR /var/lib/fulfiller
# SQLite state (the default `state: sqlite:///./fulfiller.db`); a named volume starts owned by fulfiller.
VOLUME /var/lib/fulfiller
EXPOSE 8080
# Asks /readyz on the port and scheme the config (and the command's --host/--port) give.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python3", "/opt/fulfiller/healthcheck.py"]
# SIGTERM lets in-flight jobs finish within worker.shutdown_grace_s and re-queues the rest:
# give `docker stop -t` (compose: stop_grace_period) more than that grace.
STOPSIGNAL SIGTERM
CMD ["fulfiller", "serve"]
