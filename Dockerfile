# Panda Professor in a container. The install is the one `make run` and CI use (`make install`:
# a virtualenv with the package installed from this tree), so what CI proves is what ships.
#
#   docker build -t panda-professor .
#   docker run -d --name panda --restart unless-stopped --network host \
#     -v panda-data:/data --env-file /etc/panda/panda.env panda-professor
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PANDA_DATA_DIR=/data \
    PANDA_HOST=0.0.0.0 \
    PANDA_PORT=8080

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
RUN make install PYTHON=python3 \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin panda \
    && mkdir -p /data \
    && chown panda:panda /data

ENV PATH=/app/.venv/bin:$PATH
USER panda
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PANDA_PORT', '8080'), timeout=4)"]

# `panda serve` applies pending migrations, then serves until SIGTERM (docker stop).
CMD ["panda", "serve"]
