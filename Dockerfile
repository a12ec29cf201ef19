# One image for the broker, the workers and the demo client; docker-compose.yml
# picks the command per service.

# Build stage: pip and setuptools build zeropool into a virtualenv that the
# final stage copies whole. pyzmq and msgpack ship wheels for amd64 and arm64;
# a platform without them needs compilers, and they belong here, never below.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/zeropool
WORKDIR /src
COPY . .
RUN /opt/zeropool/bin/pip install ".[metrics]"

# Final stage: the same base (the venv's interpreter path must match), no
# build tools, a user without privileges.
FROM python:3.11-slim
# Compose mounts CURVE key files as they are on the host: build with
# --build-arg USER_ID=$(id -u) when they are readable only by their owner.
ARG USER_ID=10001
RUN useradd --uid "${USER_ID}" --create-home --shell /usr/sbin/nologin zeropool
COPY --from=build /opt/zeropool /opt/zeropool
WORKDIR /app
COPY examples/ examples/
ENV PATH=/opt/zeropool/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER zeropool
# The broker's address and its Prometheus endpoint, as docker-compose.yml sets them.
EXPOSE 5555 9100
# The broker binds loopback unless told otherwise: compose sets ZEROPOOL_BIND.
CMD ["broker"]
