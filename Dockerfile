# vidflow on Ray's CUDA image: every node of a cluster (cluster-docker.yaml) starts from this image,
# so workers need no setup commands and no reinstall.
#
#   docker build -t vidflow:0.1.0 .
#   docker build -t vidflow:0.1.0 --build-arg TORCH_CUDA=cu130 .     # another CUDA build of the pinned torch
#   docker run --rm --gpus all vidflow:0.1.0 vidflow env             # versions, codecs, GPUs seen
#
# RAY_IMAGE's Ray version must equal the project's pin (ray[data,default]==2.60.0 in pyproject.toml) and its
# Python the version the project is tested with (3.11); TORCH_VERSION is the pin of README/.ci/run.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu128
FROM ${RAY_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128

# the FFmpeg CLI for the benches (PyAV brings its own libraries)
USER root
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*
USER ray

# the CUDA build of the pinned torch first, so the project's "torch>=2.4" resolves to it and nothing newer
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"

WORKDIR /home/ray/vidflow
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users pipeline ./pipeline
COPY --chown=ray:users stages ./stages
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users bench ./bench
# the project with all extras; fail the build when the image's Ray or torch is not the pinned one
RUN pip install --no-cache-dir ".[s3,gcs,diffusion,dev]" \
    && python -c "import ray, torch; assert ray.__version__ == '2.60.0', ray.__version__; \
assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && vidflow env

# jobs run from the image's copy, or from the code `ray job submit --working-dir .` ships (it comes first on sys.path)
ENV PYTHONPATH=/home/ray/vidflow
