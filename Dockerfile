# The daemon without the Functions host: `python -m rotation serve` (docs/deploy.md, "Run as a container").
# One process: the Event Grid webhook (POST /api/events), the queue worker on rotation-jobs, the reconcile
# timer and the HTTP routes, on port 8080. ROTATION_HTTP_KEY is required (it listens beyond loopback).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt ./
RUN pip install --requirement requirements.txt
# host.json beside the package: the queue worker reads extensions.queues from it, as the Functions host does.
COPY host.json ./
COPY rotation ./rotation

RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin rotator
USER 10001

EXPOSE 8080
# SIGTERM drains: running operations are handed to check jobs within --grace seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "rotation", "--log-format", "json", "serve", "--host", "0.0.0.0", "--port", "8080"]
