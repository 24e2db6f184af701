# Image for the app services of docker-compose.yml (saga api / worker / beat / flower / migrate).
# Stage 1 builds the package's wheel from the files below (tests/test_deploy.py builds the same wheel and checks
# it holds every module the services import); stage 2 installs that wheel and nothing else of the sources.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py cli.py ./
COPY saga/ saga/
COPY api/ api/
COPY tasks/ tasks/
COPY workers/ workers/
COPY devstack/ devstack/
COPY standins/ standins/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# With the tracing extra, so SAGA_TRACING=true needs no other image.
RUN pip install "$(ls /wheels/*.whl)[tracing]" && rm -rf /wheels \
    && useradd --system --create-home --home-dir /home/saga --shell /usr/sbin/nologin --uid 10001 saga

# Unprivileged; the home directory is the writable working directory (e.g. beat's schedule file).
USER saga
WORKDIR /home/saga
EXPOSE 8000 5555 9100
CMD ["saga", "api"]
