# The agentrun application image (worker and API), for deployments with a registry.
# Not used by the embedded default or the tests (they run from the checkout).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agentrun ./agentrun
COPY accounts ./accounts
COPY secretstore ./secretstore
COPY telemetry ./telemetry
COPY store ./store
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
COPY sandbox ./sandbox
COPY worker.py ./
COPY cli ./cli
RUN pip install --no-cache-dir .
# mkfs.ext4, debugfs and losetup: the workspace quota's ext4 images on loop devices.
RUN apt-get update && apt-get install -y --no-install-recommends e2fsprogs mount \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10002 --create-home agentrun \
    && mkdir -p /var/lib/agentrun && chown agentrun:agentrun /var/lib/agentrun
# (A named volume mounted on /var/lib/agentrun copies this ownership when it is new.)
USER agentrun
ENV AGENTRUN_STATE_DIR=/var/lib/agentrun
CMD ["python", "worker.py"]
