# fulfiller: the webhook receiver and workers in one container.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY scripts ./scripts
COPY config ./config
# The same install the README gives (libmagic from Debian, the package into /app/.venv),
# then drop the apt lists and pip's cache from the image.
RUN scripts/install.sh && rm -rf /var/lib/apt/lists/* /root/.cache \
    && useradd --system --uid 10001 --home-dir /var/lib/fulfiller --create-home fulfiller

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FULFILLER_CONFIG=/etc/fulfiller/config.yaml
USER fulfiller
WORKDIR /var/lib/fulfiller
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
# SIGTERM lets in-flight jobs finish within worker.shutdown_grace_s and re-queues the rest.
STOPSIGNAL SIGTERM
CMD ["fulfiller", "serve"]
