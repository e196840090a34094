# The engine image: `engage run` against the Kafka and Redis given by ENGAGE_* variables.
FROM python:3.11-slim

WORKDIR /app/engage
COPY pyproject.toml README.md ./
COPY . .
# gcc lets setup.py compile the hot modules with mypyc (a third faster).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir . \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home engage && mkdir -p /var/lib/engage \
    && chown engage /var/lib/engage
USER engage
ENV ENGAGE_RECOVERY_DIR=/var/lib/engage/recovery \
    ENGAGE_METRICS_PORT=9108
EXPOSE 9108
ENTRYPOINT ["engage"]
CMD ["run"]
