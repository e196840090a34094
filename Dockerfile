# The engine image: `engage run` against the Kafka and Redis given by ENGAGE_* variables.
FROM python:3.11-slim

WORKDIR /app/engage
COPY pyproject.toml README.md ./
COPY . .
RUN pip install --no-cache-dir . && useradd --create-home engage && mkdir -p /var/lib/engage \
    && chown engage /var/lib/engage
USER engage
ENV ENGAGE_RECOVERY_DIR=/var/lib/engage/recovery \
    ENGAGE_METRICS_PORT=9108
EXPOSE 9108
ENTRYPOINT ["engage"]
CMD ["run"]
