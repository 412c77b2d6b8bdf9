# billing-worker: the wheel built in one stage, installed into a slim runtime in the next.
#   docker build -t billing-worker .
#   docker run billing-worker            # `billing-worker run`; BILLING_* configure it
#   docker run billing-worker stripe-relay
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Exactly what the wheel is built from (pyproject.toml names it).
COPY pyproject.toml README.md ./
COPY billing_worker ./billing_worker
COPY schemas ./schemas
COPY migrations ./migrations
RUN pip install build && python -m build --wheel --outdir /dist

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=build /dist/*.whl /tmp/
RUN pip install /tmp/*.whl && rm /tmp/*.whl \
    && useradd --system --uid 10001 --no-create-home billing
USER billing
# /metrics, /healthz, /readyz (BILLING_HTTP_PORT); the Stripe relay (BILLING_STRIPE_RELAY_PORT).
EXPOSE 9464 8080
# Liveness of the worker, with the standard library (the slim image has no curl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BILLING_HTTP_PORT', '9464') + '/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["billing-worker"]
CMD ["run"]
