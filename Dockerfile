# sweepserve: API and worker image. CUDA-capable: PyPI's Linux torch wheels bundle the CUDA
# runtime libraries, so with the NVIDIA container toolkit the worker sees the host's GPUs.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SWEEPSERVE_ARTIFACTS_DIR=/var/lib/sweepserve/artifacts \
    SWEEPSERVE_CACHE_DIR=/var/lib/sweepserve/cache \
    SWEEPSERVE_DATA_DIR=/var/lib/sweepserve/data

WORKDIR /opt/sweepserve

# Heavy, rarely-changing layer first: the exact torch build the project pins.
RUN pip install torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY app ./app
COPY ml ./ml
COPY migrations ./migrations
RUN pip install '.[onnx,s3]'

RUN useradd --create-home --uid 10001 sweepserve \
    && mkdir -p /var/lib/sweepserve/artifacts /var/lib/sweepserve/cache /var/lib/sweepserve/data \
    && chown -R sweepserve:sweepserve /var/lib/sweepserve
USER sweepserve

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"

CMD ["sweepserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
