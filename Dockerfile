# The virk-exporter demo app (compose.yaml builds it from the repository).
#   docker build -t virk-exporter-demo .
#   docker run --rm -p 10098:10098 virk-exporter-demo demo --host 0.0.0.0 --port 10098 --duration 0
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# CPU build of torch first: a bare `torch` requirement pulls the multi-GB CUDA build. For a GPU
# image start from a CUDA base and install the matching torch instead.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.2"

WORKDIR /src
COPY pyproject.toml README.md* LICENSE ./
COPY virk_exporter ./virk_exporter
# The stack files are package data (virk_exporter/stack/ links to them: `virk-exporter stack export`).
COPY prometheus ./prometheus
COPY grafana ./grafana
COPY compose.yaml .env.example ./
COPY docs/runbook.md ./docs/
# [demo]: scikit-image and scikit-learn ship the real photographs the demo streams; compose stores
# bundles in MinIO ([s3]) and sends traces to Jaeger over OTLP ([otlp]).
RUN pip install ".[demo,s3,otlp]" && rm -rf /src

RUN useradd --create-home --uid 10001 virk && mkdir -p /home/virk/spool && chown -R virk /home/virk
USER virk
WORKDIR /home/virk

EXPOSE 10098
ENTRYPOINT ["virk-exporter"]
CMD ["demo", "--host", "0.0.0.0", "--port", "10098", "--duration", "0"]
