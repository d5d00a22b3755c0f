# unship: one image for the worker (`unship worker`) and the HTTP API (`unship up`).
# Build: docker build -t unship:0.1.0 .   Run alone (embedded Temporal dev server, state in a volume):
#   docker run --rm -p 127.0.0.1:8080:8080 -v unship-state:/var/lib/unship unship:0.1.0

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY playbooks ./playbooks
COPY workflows ./workflows
COPY activities ./activities
COPY workers ./workers
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 unship \
    && useradd --system --uid 10001 --gid unship --home-dir /var/lib/unship --shell /usr/sbin/nologin unship \
    && install -d -o unship -g unship -m 0750 /var/lib/unship
COPY playbooks/library /etc/unship/playbooks

ENV UNSHIP_STATE_DIR=/var/lib/unship \
    UNSHIP_PLAYBOOKS_DIR=/etc/unship/playbooks \
    UNSHIP_HTTP_ADDR=0.0.0.0:8080
WORKDIR /var/lib/unship
USER 10001:10001
EXPOSE 8080

# Probes the API on the port of UNSHIP_HTTP_ADDR; the worker container turns this off (it serves no HTTP).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('UNSHIP_HTTP_ADDR', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3)"]

ENTRYPOINT ["unship"]
CMD ["up"]
