# Image of the service (docker-compose.yml: `python -m service api|worker|beat|flower|migrate`). Stage 1 builds the
# library's wheel from its own sources alone; stage 2 installs that wheel with the service's dependency group and
# copies the service's modules to /app, where they run (they are never installed as packages).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY saga/ saga/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app
WORKDIR /app
COPY --from=build /wheels /wheels
COPY pyproject.toml ./
# Dependency groups need pip 25.1 or newer; 25.3 and setuptools 78.1.1 are the first without known vulnerabilities.
RUN pip install 'pip>=25.3' 'setuptools>=78.1.1' \
    && pip install "$(ls /wheels/*.whl)[redis,metrics,tracing,client]" --group service && rm -rf /wheels \
    && useradd --system --create-home --home-dir /home/saga --shell /usr/sbin/nologin --uid 10001 saga
COPY service.py celeryconfig.py ./
COPY api/ api/
COPY tasks/ tasks/
COPY workers/ workers/
COPY webhooks/ webhooks/
COPY migrations/ migrations/

# Unprivileged; the home directory is the writable place (e.g. beat's schedule file).
USER saga
EXPOSE 8000 5555 9100
CMD ["python", "-m", "service", "api"]
