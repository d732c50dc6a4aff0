# syntax=docker/dockerfile:1
# federation-redirect: docker build -t federation-redirect . (see README.md, "Docker" and
# "Deployment"). tests/test_deploy.py checks the properties promised below.

# -- build: the project's wheel and the wheels of every dependency --------------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY federation_redirect ./federation_redirect
# uvicorn[standard] (a dependency) brings uvloop and httptools, which `serve` uses when present.
RUN pip wheel --wheel-dir /wheels .

# -- runtime: installed from those wheels only, run as an unprivileged user ------------------
FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="federation-redirect" \
      org.opencontainers.image.description="Front door of a federation of BinderHubs" \
      org.opencontainers.image.licenses="BSD-3-Clause"
# Nothing is written at run time: bytecode is compiled when the wheels are installed, so the
# container runs with a read-only root filesystem (Kubernetes mounts an emptyDir on /tmp).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    FEDERATION_REDIRECT_CONFIG=/etc/federation-redirect/config.yaml
# The wheels are bind-mounted, not copied, so they leave no layer behind; --no-index: nothing
# is fetched that the build stage did not build.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels /wheels/federation_redirect-*.whl \
    && groupadd --system --gid 10001 redirect \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin redirect
# The public mybinder.org federation by default; mount a file here to replace it (Kubernetes:
# the ConfigMap of k8s/). Owned by root and read-only to the server.
COPY config/mybinder.yaml /etc/federation-redirect/config.yaml
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-I", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# `docker run IMAGE check-config /etc/federation-redirect/config.yaml` runs another command.
ENTRYPOINT ["federation-redirect"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
