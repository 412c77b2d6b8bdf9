# billing-worker: a slim image with the wheel installed and nothing else.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY billing_worker ./billing_worker
COPY schemas ./schemas
COPY migrations ./migrations
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /dist

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl \
    && useradd --system --uid 10001 --no-create-home billing
USER billing
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BILLING_HTTP_PORT', '9464') + '/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["billing-worker"]
CMD ["run"]
