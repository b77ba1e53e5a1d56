# The cl_ml_tools service: ffmpeg and exiftool from Debian, the package in a virtual environment, the models
# fetched while building.
#   docker build -t cl-ml-tools .
#   docker run -p 8000:8000 -e CL_ML_TOOLS_API_KEY=... -v cl-ml-tools:/var/lib/cl_ml_tools \
#       -v /path/to/photos:/srv/archive:ro cl-ml-tools
# docs/service.md ("Docker") has the rest: the build arguments BASE and MODELS, a private package index.
# Building needs the network (PyPI, Debian, the model hosts).

# Any Debian bookworm image: python:3.11-slim-bookworm, or a plain Debian without Python (tests/container/run.sh
# builds one with debootstrap), which gets Debian's python3.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# tini as PID 1 reaps the ffmpeg and exiftool processes of runners that were stopped at a timeout. MediaPipe
# links libEGL and libGLESv2, the OpenCV it imports libGL and GLib: without them face detection fails.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg libimage-exiftool-perl tini \
        libegl1 libgles2 libgl1 libglib2.0-0 \
        $(command -v python3 >/dev/null || echo python3 python3-venv) \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/cl_ml_tools cl-ml-tools \
    && mkdir -p /opt/cl_ml_tools/models /etc/cl_ml_tools

# Matplotlib (MediaPipe imports it) keeps its font cache beside the models unless told; they are read-only here.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CL_ML_TOOLS_MODEL_CACHE=/opt/cl_ml_tools/models \
    MPLCONFIGDIR=/var/lib/cl_ml_tools/.cache/matplotlib \
    PATH=/opt/cl_ml_tools/.venv/bin:$PATH

WORKDIR /opt/cl_ml_tools
# The dependencies first, read from pyproject.toml alone, so that a change to the code reuses this layer.
# The optional secrets pip.conf and pip-cert (a CA bundle, named in that pip.conf as
# cert = /run/secrets/pip-cert) carry a package index's settings without leaving them in the image.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-cert \
    python3 -m venv .venv \
    && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["service"]))' >/tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY pyproject.toml setup.py README.md Snakefile config.yaml /tmp/build/
COPY src /tmp/build/src
COPY workflow /tmp/build/workflow
COPY profiles /tmp/build/profiles
COPY envs /tmp/build/envs
# Not editable: the wheel carries the workflow (the archive job's Snakefile, rules, scripts, profiles) inside
# the package, and the sources are gone once it is installed (pip compiles it: the service user cannot write
# __pycache__ folders).
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-cert \
    pip install --no-deps /tmp/build && rm -rf /tmp/build
COPY deploy/config.yaml /etc/cl_ml_tools/config.yaml

# MODELS=all: every registered model, checked against its pinned sha256; the jobs never download anything.
# MODELS=none: none (mount a model cache at /opt/cl_ml_tools/models, or name files under `models:` in the config).
# Root owns them, like everything but the volume: the service user can read them, not change them.
ARG MODELS=all
RUN case "$MODELS" in \
        all) cl-ml-tools models fetch --no-progress && chmod -R a+rX /opt/cl_ml_tools/models ;; \
        none) ;; \
        *) echo "MODELS must be all or none, not '$MODELS'" >&2; exit 1 ;; \
    esac

USER cl-ml-tools
EXPOSE 8000
VOLUME ["/var/lib/cl_ml_tools"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["tini", "--"]
CMD ["cl-ml-tools", "serve", "--config", "/etc/cl_ml_tools/config.yaml"]
