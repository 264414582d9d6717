# syntax=docker/dockerfile:1
# restyle's images, one command for every role (`restyle worker cpu|gpu|trainer`, `restyle watch`,
# `restyle bridge sqs ...`); see "Images" in the README.
#   docker build --target cpu -t REGISTRY/restyle:0.1.0-cpu .   CPU workers, trainers on CPU, bridges
#   docker build --target gpu -t REGISTRY/restyle:0.1.0-gpu .   GPU workers and trainers (CUDA)
# The GPU image's CUDA runtime comes with PyTorch's CUDA wheels (the nvidia-* packages they
# depend on); the driver comes from the node (the NVIDIA container toolkit). The CPU image takes
# PyTorch's CPU-only wheels instead and is ~4 GB smaller.
ARG PYTHON_IMAGE=python:3.11.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/restyle PATH=/opt/restyle/bin:$PATH
# libgomp: the OpenMP runtime of PyTorch's, faiss' and onnxruntime's CPU kernels. Debian's
# package versions are not pinned: a pinned version disappears from the mirror with its next
# security update, and the base image's tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# The dependencies first, from the pinned pyproject alone: a source change reuses this layer.
FROM base AS dependencies
WORKDIR /src
RUN pip install "uv==0.13.9" && python -m venv /opt/restyle
COPY pyproject.toml overrides.txt ./

FROM dependencies AS dependencies-cpu
RUN uv pip install --python /opt/restyle/bin/python --index-url https://download.pytorch.org/whl/cpu \
        "torch==2.14.1" "torchvision==0.29.2" \
    && uv pip install --python /opt/restyle/bin/python --override overrides.txt -r pyproject.toml

FROM dependencies AS dependencies-gpu
RUN uv pip install --python /opt/restyle/bin/python --override overrides.txt -r pyproject.toml

# Then the source, installed without dependencies (they are all in place).
FROM dependencies-cpu AS build-cpu
COPY . .
RUN uv pip install --python /opt/restyle/bin/python --no-deps .

FROM dependencies-gpu AS build-gpu
COPY . .
RUN uv pip install --python /opt/restyle/bin/python --no-deps .

# What runs: the virtualenv and a user without privileges. Writable paths for a read-only root
# filesystem: the state dir (RocksDB tables, the embedded index, in-flight journal), the model
# cache and /tmp; mount them (see k8s/).
FROM base AS runtime
RUN useradd --uid 10001 --user-group --home-dir /home/restyle --create-home restyle \
    && mkdir -p /var/lib/restyle /models \
    && chown restyle:restyle /var/lib/restyle /models
ENV RESTYLE_STATE_DIR=/var/lib/restyle RESTYLE_WEB_HOST=0.0.0.0 HF_HOME=/models
WORKDIR /home/restyle
USER 10001:10001
EXPOSE 6066
ENTRYPOINT ["restyle"]

FROM runtime AS gpu
COPY --from=build-gpu /opt/restyle /opt/restyle
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
CMD ["worker", "gpu"]

# The default target: `docker build .` builds the CPU image.
FROM runtime AS cpu
COPY --from=build-cpu /opt/restyle /opt/restyle
CMD ["worker", "cpu"]
