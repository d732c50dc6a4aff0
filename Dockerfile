# federation-redirect: docker build -t federation-redirect . (see README.md, "Docker")

# -- build: the project's wheel and the wheels of every dependency --------------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY federation_redirect ./federation_redirect
RUN pip wheel --wheel-dir /wheels .

# -- runtime: installed from those wheels only, run as an unprivileged user ------------------
FROM python:3.11.11-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    FEDERATION_REDIRECT_CONFIG=/etc/federation-redirect/config.yaml
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels federation-redirect \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin redirect
# The public mybinder.org federation by default; mount a file here to replace it.
COPY config/mybinder.yaml /etc/federation-redirect/config.yaml
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["federation-redirect", "serve", "--host", "0.0.0.0", "--port", "8080"]
