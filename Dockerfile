# syntax=docker/dockerfile:1
# The Trace image: every process (`trace dispatcher|worker|sink|query-service|deliver|api|
# migrate`, the ECS services of deploy/aws) and the runner Lambda (entry point awslambdaric,
# handler trace_platform.runner.lambda_entry.handler). Bases are pinned by digest; update them
# deliberately (docs/deploy-aws.md, "Upgrade"). Linted by hadolint in the test suite.

# -- node: the runtime of Node/TypeScript UDF bundles, and esbuild -----------------------------
FROM node:22-bookworm-slim@sha256:43ac6c60b8f89723f746e8a92ce91abd5017e627ce1ddfe4238355d3a30b772c AS node

# -- build: the wheel and its dependencies into one virtualenv ---------------------------------
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /app/.venv \
 && /app/.venv/bin/pip install ".[aws]" "awslambdaric==4.2.2"
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s /usr/local/lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && npm install --prefix /app/tools --no-audit --no-fund --no-save esbuild@0.25.12

# -- runtime: non-root, bubblewrap for the UDF and query sandboxes ---------------------------
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91 AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      bubblewrap=0.8.0-2+deb12u1 \
      ca-certificates=20230311+deb12u1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --home-dir /home/trace --create-home trace
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=build /app /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TRACE_HOME=/tmp/trace \
    TRACE_ESBUILD=/app/tools/node_modules/.bin/esbuild
USER 10001
WORKDIR /home/trace
EXPOSE 8080 8081 8090
HEALTHCHECK NONE
ENTRYPOINT ["trace"]
CMD ["--help"]
