# Image for the app services of docker-compose.yml (saga api / worker / beat / flower / migrate).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs, so local .venv/ and .saga/ never enter the image.
COPY pyproject.toml README.md celeryconfig.py cli.py /tmp/src/
COPY saga /tmp/src/saga
COPY api /tmp/src/api
COPY tasks /tmp/src/tasks
COPY workers /tmp/src/workers
RUN pip install /tmp/src && rm -rf /tmp/src \
    && useradd --system --create-home --home-dir /home/saga --shell /usr/sbin/nologin --uid 10001 saga

# Unprivileged; the home directory is the writable working directory (e.g. beat's schedule file).
USER saga
WORKDIR /home/saga
EXPOSE 8000 5555
CMD ["saga", "api"]
