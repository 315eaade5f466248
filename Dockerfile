# Stockyard in a container: a slim Python image plus the one file. Build the pyz first
# (`make pyz`), then: docker build -t stockyard . && docker run -p 4200:4200 -v stockyard:/data \
#   -e STOCKYARD_ADMIN_KEY=... -e STOCKYARD_ENCRYPTION_KEY=... -e OPENAI_API_KEY=... stockyard
# tests/test_packaging.py runs this file's ENV, CMD and HEALTHCHECK against the built pyz.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin stockyard \
    && mkdir -p /opt/stockyard /data \
    && chown stockyard:stockyard /data \
    && chmod 0700 /data

COPY dist/stockyard.pyz /opt/stockyard/stockyard.pyz

# The database (and its snapshots) and the unpacked native libraries live on the volume;
# the image itself stays read-only. Listening on all interfaces needs STOCKYARD_ADMIN_KEY,
# and clients reaching it by a name need that name in STOCKYARD_PUBLIC_HOSTS.
ENV STOCKYARD_DB=/data/stockyard.db \
    STOCKYARD_HOST=0.0.0.0 \
    STOCKYARD_PORT=4200 \
    XDG_CACHE_HOME=/data/cache \
    PYTHONDONTWRITEBYTECODE=1

USER stockyard
VOLUME ["/data"]
EXPOSE 4200

HEALTHCHECK --interval=15s --timeout=6s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4200/readyz', timeout=5).status == 200 else 1)"]

# serve stops cleanly on SIGTERM (docker stop): in-flight requests finish, traces are written.
STOPSIGNAL SIGTERM
CMD ["python3", "/opt/stockyard/stockyard.pyz", "serve"]
