# The cl_ml_tools service: Python slim, ffmpeg and exiftool from Debian, the models fetched while building.
#   docker build -t cl-ml-tools .
#   docker run -p 8000:8000 -e CL_ML_TOOLS_API_KEY=... -v cl-ml-tools:/var/lib/cl_ml_tools \
#       -v /path/to/photos:/srv/archive:ro cl-ml-tools
# docs/service.md ("Docker") has the rest. Building needs the network (PyPI, Debian, the model hosts).
FROM python:3.11-slim-bookworm

# tini as PID 1 reaps the ffmpeg and exiftool processes of runners that were stopped at a timeout.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg libimage-exiftool-perl tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/cl_ml_tools cl-ml-tools \
    && mkdir -p /opt/cl_ml_tools/models /etc/cl_ml_tools \
    && chown cl-ml-tools:cl-ml-tools /opt/cl_ml_tools/models

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CL_ML_TOOLS_MODEL_CACHE=/opt/cl_ml_tools/models

WORKDIR /opt/cl_ml_tools
COPY pyproject.toml setup.py README.md Snakefile config.yaml /tmp/build/
COPY src /tmp/build/src
COPY workflow /tmp/build/workflow
COPY profiles /tmp/build/profiles
COPY envs /tmp/build/envs
# Not editable: the wheel carries the workflow (the archive job's Snakefile, rules, scripts, profiles) inside
# the package, and the sources are gone once it is installed.
RUN pip install '/tmp/build[service]' && rm -rf /tmp/build
COPY deploy/config.yaml /etc/cl_ml_tools/config.yaml

USER cl-ml-tools
# Every registered model, checked against its pinned sha256; the jobs never download anything.
RUN cl-ml-tools models fetch --no-progress

EXPOSE 8000
VOLUME ["/var/lib/cl_ml_tools"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["tini", "--"]
CMD ["cl-ml-tools", "serve", "--config", "/etc/cl_ml_tools/config.yaml"]
