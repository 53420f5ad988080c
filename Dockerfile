# syntax=docker/dockerfile:1.7
#
# Fanfinity engagement analytics service: production image.
#
# Size, uncompressed, about 255 MB:
#   python:3.11-slim-bookworm base  ~125 MB (Debian slim + CPython; no compilers; the registry's
#                                            figure, not measured here)
#   /app/.venv                      130 MB  (142 MB on a 4 KiB-block disk, 38 MB gzipped):
#                                            byte-compiled .pyc 34 MB, faker 22 MB (pulled in by
#                                            litestar's polyfactory), grpc 19 MB (OTLP exporter),
#                                            uvloop 14 MB, pygments 9 MB (litestar's rich), pymongo
#                                            6 MB, Swagger UI's assets 2 MB
#   tini                            <1 MB
# Measured by running the `uv sync` steps below (and the clean-up) outside Docker with the same
# UV_* settings into an empty directory, then `du -sb` (what a layer tarball holds) and `du -sh`.
# Nothing else is copied from the builder: no uv, no caches, no build tools, no sources.
#
# Build:  docker build -t fanfinity:dev .
# Run:    docker run --rm -p 8000:8000 fanfinity:dev     (memory:// engine, development mode)

############################ builder ############################
FROM python:3.11.17-slim-bookworm AS builder

# uv is copied from its pinned, official distroless image.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /bin/

# - compile .pyc at build time (the runtime root filesystem is read-only in Kubernetes)
# - copy files out of the cache mount instead of hard-linking into it
# - use the image's own CPython, never download one
# - build the virtualenv at the same absolute path it has at run time
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src

# 1) Third-party dependencies only, from the lock file. This layer is rebuilt only
#    when pyproject.toml or uv.lock change, not on every source edit.
#    Swagger UI's wheel also ships source maps and ES-module builds the page never loads
#    (10 MB): only swagger-ui-bundle.js, the standalone preset, the CSS and favicons stay.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project --no-editable \
    && find /app/.venv -path '*/swagger_ui_bundle/vendor/*' \
        \( -name '*.map' -o -name 'swagger-ui-es-bundle*' -o -name 'swagger-ui.js' \) -delete

# 2) The project itself, installed as a regular (non-editable) wheel into the venv,
#    so /src is not needed at run time.
#    LICENSE goes into the wheel's .dist-info/licenses/ (pyproject `license-files`).
COPY pyproject.toml uv.lock README.md LICENSE ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

############################ runtime ############################
FROM python:3.11.17-slim-bookworm AS runtime

# tini as PID 1: forwards SIGTERM to the app (graceful shutdown: stop accepting, flush the
# ingest batcher, checkpoint) and reaps zombies. The version glob pins bookworm's 0.19.0-1
# on every architecture (the binNMU suffix differs per arch).
# pip/setuptools/wheel of the base image are removed: the app runs from its own venv.
RUN apt-get update \
    && apt-get install -y --no-install-recommends "tini=0.19.0-1*" \
    && rm -rf /var/lib/apt/lists/* \
    && python -m pip uninstall -y --no-cache-dir pip setuptools wheel \
    && groupadd --system --gid 10001 fanfinity \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin fanfinity

COPY --from=builder --chown=10001:10001 /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FANFINITY_HOST=0.0.0.0 \
    FANFINITY_PORT=8000

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# No curl in the image: probe with the interpreter that is already there. The port follows
# FANFINITY_PORT so the same image works for `fanfinity aggregate` on 8001.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('FANFINITY_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["fanfinity", "serve"]

# OCI labels last, so changing them never invalidates the layers above.
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/fanfinity/fanfinity
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="fanfinity" \
      org.opencontainers.image.description="Real-time fan engagement analytics: durable event ingest, exactly-once aggregation, O(1) metric reads." \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT"
