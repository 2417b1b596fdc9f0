# ingress-box: one process, one SQLite file on the /data volume.
#   docker build -t ingress-box .
#   docker run -p 8080:8080 -v ingress-data:/data -e INGRESS_BOX_ADMIN_TOKEN=... ingress-box
# The same image runs on PostgreSQL (the postgresql extra is installed; psycopg's binary wheel,
# no libpq needed): -e INGRESS_BOX_DB=postgresql://user:password@host:5432/dbname
# CI cannot run Docker: .ci/check-dockerfile replays these steps in fresh venvs instead.

ARG PYTHON_VERSION=3.11

# Stage 1: wheels of the project and its dependencies (with the postgresql extra), installed
# into a venv that has no pip.
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# schema.sql: ingress_box/schema.sql is a symlink to it.
COPY pyproject.toml README.md schema.sql ./
COPY ingress_box ./ingress_box
RUN pip wheel --wheel-dir /wheels '.[postgresql]' \
    && python -m venv --without-pip /opt/ingress-box \
    && pip --python /opt/ingress-box/bin/python install --no-index --find-links /wheels \
        'ingress-box[postgresql]'

# Stage 2: the slim base, the venv, a non-root user. No compiler, no wheels, no pip cache.
FROM python:${PYTHON_VERSION}-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home ingress \
    && mkdir -p /data && chown ingress:ingress /data
COPY --from=build /opt/ingress-box /opt/ingress-box
ENV PATH=/opt/ingress-box/bin:$PATH \
    INGRESS_BOX_HOST=0.0.0.0 \
    INGRESS_BOX_PORT=8080 \
    INGRESS_BOX_DB=/data/ingress-box.db \
    PYTHONUNBUFFERED=1
VOLUME /data
WORKDIR /data
EXPOSE 8080
USER ingress
# serve (uvicorn and the in-process worker) and worker both take SIGTERM as "stop accepting,
# finish what is in flight (bounded by 10 s), close the database, exit 0". Docker waits 10 s
# by default before SIGKILL: give it more with `docker run --stop-timeout 30`.
STOPSIGNAL SIGTERM
# `ingress-box health` asks serve's /readyz; in a worker-only container (nothing listens) it
# checks the worker's heartbeat file next to the database instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["ingress-box", "health"]
CMD ["ingress-box", "serve"]
