# The regproxy image: the sidecar (`regproxy run`) and the demo applications (`regproxy
# demo-provider`, `regproxy demo-consumer`); docker-compose.yml runs all of them from it.
#
#   docker build -t regproxy .
#   docker run --rm regproxy run --help
#
# Two stages: the builder compiles the data path with mypyc (regproxy/native.py says what and why)
# into a wheel that carries the .so files; the runtime stage installs that wheel, without mypy or a
# compiler, and `regproxy run` logs "data path compiled with mypyc" at start.  Each stage's work is
# one step of scripts/docker-build.sh, which tests/test_docker_build_steps.py runs in fresh venvs
# (no Docker engine there): what the image runs is what the test proved.

FROM python:3.11-slim AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The C compiler mypyc's extensions need.  Python's headers come with this image (its Python is
# built from source in /usr/local); Debian's python3-dev would be for Debian's own Python.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Only what the package is built from (.dockerignore keeps the rest out of the context), so
# editing tests or docs does not invalidate this layer.  constraints.txt pins every dependency to
# the versions `make test` tested (the same file `make venv` installs with), mypy among them.
COPY pyproject.toml README.md constraints.txt /src/
COPY scripts/docker-build.sh scripts/native.py /src/scripts/
COPY regproxy /src/regproxy
RUN sh /src/scripts/docker-build.sh builder /src /dist


FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The builder's wheel (regproxy with its compiled .so files and regproxy/_native.json) and the
# same constraints.txt for the runtime dependencies; the step fails unless the installed regproxy
# runs the compiled data path.
COPY --from=builder /dist /dist
COPY constraints.txt scripts/docker-build.sh /dist/
RUN sh /dist/docker-build.sh runtime /dist && rm -rf /dist

# Not root: the sidecar needs no privilege (all its ports are above 1024).  Its state directory
# (data_dir in conf/compose/*.yaml) is the user's home.
RUN useradd --system --create-home --home-dir /var/lib/regproxy --shell /usr/sbin/nologin regproxy
USER regproxy
WORKDIR /var/lib/regproxy

# admin, API, ingress, egress and the demo application's port (see conf/regproxy.yaml).
EXPOSE 20880 20881 20882 22222 34901

ENTRYPOINT ["regproxy"]
CMD ["--help"]
