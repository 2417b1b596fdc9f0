# ingress-box: one process, one SQLite file on the /data volume.
#   docker build -t ingress-box .
#   docker run -p 8080:8080 -v ingress-data:/data -e INGRESS_BOX_ADMIN_TOKEN=... ingress-box

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md schema.sql ./
COPY ingress_box ./ingress_box
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /data --no-create-home ingress \
    && mkdir -p /data && chown ingress:ingress /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV INGRESS_BOX_HOST=0.0.0.0 \
    INGRESS_BOX_PORT=8080 \
    INGRESS_BOX_DB=/data/ingress-box.db \
    PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8080
USER ingress
# uvicorn and the worker both treat SIGTERM as "finish what is in flight, then exit".
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD python -c "import os,sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('INGRESS_BOX_PORT','8080'), timeout=4).status == 200 else 1)"
CMD ["ingress-box", "serve"]
