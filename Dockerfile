# The regproxy image: the sidecar (`regproxy run`) and the demo applications (`regproxy
# demo-provider`, `regproxy demo-consumer`); docker-compose.yml runs all of them from it.
#
#   docker build -t regproxy .
#   docker run --rm regproxy run --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package is built from (.dockerignore keeps the rest out of the context), so
# editing tests or docs does not invalidate this layer.  constraints.txt pins every dependency to
# the versions `make test` tested (the same file `make venv` installs with).
COPY pyproject.toml README.md constraints.txt /src/
COPY regproxy /src/regproxy
RUN pip install -c /src/constraints.txt /src && rm -rf /src

# Not root: the sidecar needs no privilege (all its ports are above 1024).  Its state directory
# (data_dir in conf/compose/*.yaml) is the user's home.
RUN useradd --system --create-home --home-dir /var/lib/regproxy --shell /usr/sbin/nologin regproxy
USER regproxy
WORKDIR /var/lib/regproxy

# admin, API, ingress, egress and the demo application's port (see conf/regproxy.yaml).
EXPOSE 20880 20881 20882 22222 34901

ENTRYPOINT ["regproxy"]
CMD ["--help"]
