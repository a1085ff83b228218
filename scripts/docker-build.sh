#!/bin/sh
# The Docker image's build steps (Dockerfile), one stage each, in a script so that
# tests/test_docker_build_steps.py runs the very same commands in fresh venvs: there is no Docker
# engine where the tests run, and these steps are then proven all the same.
#
#   scripts/docker-build.sh builder SRC DIST   # SRC: the build context (pyproject.toml, README.md,
#                                              # constraints.txt, regproxy/, scripts/); the wheel goes to DIST
#   scripts/docker-build.sh runtime DIST       # DIST: that wheel and constraints.txt
#
# Builder: the `native` extra (mypy, hence mypyc, and setuptools) pinned by constraints.txt, the data
# path compiled in SRC by scripts/native.py (REGPROXY_NATIVE=require: no compiler, no image), then a
# wheel of SRC that carries the compiled .so files and their stamp regproxy/_native.json
# (pyproject.toml's package-data). Runtime: that wheel and regproxy's runtime dependencies, pinned
# by the same constraints.txt; no mypy, no compiler. It ends by checking, from outside any checkout,
# that the installed regproxy runs the compiled data path, so an image that would fall back to pure
# Python fails to build instead.
#
# PYTHON picks the interpreter (default: python, the image's; the test gives its venv's).
set -eu

PYTHON=${PYTHON:-python}
stage=${1:?usage: docker-build.sh builder SRC DIST | runtime DIST}

case "$stage" in
builder)
    src=${2:?builder needs SRC}
    dist=${3:?builder needs DIST}
    "$PYTHON" -m pip install --quiet -c "$src/constraints.txt" "$src[native]"
    # Whatever the context brought (a developer's own build of another platform), compile afresh.
    "$PYTHON" "$src/scripts/native.py" --clean
    REGPROXY_NATIVE=require "$PYTHON" "$src/scripts/native.py"
    # No build isolation: the wheel is built with the setuptools constraints.txt pins, installed above.
    "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -c "$src/constraints.txt" -w "$dist" "$src"
    ;;
runtime)
    dist=${2:?runtime needs DIST}
    "$PYTHON" -m pip install --quiet -c "$dist/constraints.txt" "$dist"/regproxy-*.whl
    # From / (not a checkout): the installed package, as `regproxy run` will import it.
    (cd / && "$PYTHON" -c '
import sys
import regproxy.native as native, regproxy.proxy.forwarder as forwarder
mode = native.describe()
print("regproxy image: data path", mode, "(" + forwarder.__file__ + ")")
sys.exit(0 if mode.startswith("compiled") and not forwarder.__file__.endswith(".py") else 1)
')
    ;;
*)
    echo "docker-build.sh: unknown stage $stage (builder or runtime)" >&2
    exit 2
    ;;
esac
