# Placeholder: the production image (multi-stage, CUDA runtime, non-root) comes with the
# deployment work. This stage installs the package for local experiments.
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . && useradd --create-home streamer
USER streamer
ENTRYPOINT ["streamer"]
