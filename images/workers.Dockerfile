# The data-plane image: `cdcflow produce`, `cdcflow consume` (in-process runner),
# `cdcflow simulate`, `verify`, `status` ... configured entirely by CDCFLOW_* env.
# Build from the repository root:  docker build -f images/workers.Dockerfile -t cdcflow-workers .
# Installs exactly what uv.lock pins (no dev tools); nothing is downloaded at run time.

FROM python:3.11-slim AS build
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY workers ./workers
COPY operator ./operator
RUN uv sync --locked --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home cdcflow
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CDCFLOW_LOG_FORMAT=json \
    CDCFLOW_METRICS_HOST=0.0.0.0
USER 10001
WORKDIR /home/cdcflow
# /metrics, /healthz, /readyz (producer 9464, consumer 9465 unless CDCFLOW_METRICS_PORT)
EXPOSE 9464 9465
ENTRYPOINT ["cdcflow"]
CMD ["--help"]
