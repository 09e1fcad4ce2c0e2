# syntax=docker/dockerfile:1
# replearn images for remote ZenML orchestrators (Kubeflow, Kubernetes), torchrun across pods and cron jobs.
#
#   docker build --target training  -t replearn:training  .   # torch + CUDA, every stage and ZenML step
#   docker build --target inference -t replearn:inference .   # onnxruntime-gpu, no torch: embed and cluster
#
# Base: python:3.11-slim plus the pinned wheels of constraints.txt, not a CUDA/PyTorch base image. The
# torch==2.14.1 wheel on PyPI is itself CUDA-enabled: it brings the CUDA 13 runtime, cuDNN and NCCL as
# nvidia-* wheels, pinned in constraints.txt. The image therefore holds exactly the versions the tests ran
# with, while a pytorch/pytorch or nvidia/cuda base brings its own torch and CUDA toolkit (gigabytes that
# nothing uses) and would have to be kept in step with the pins by hand. The host needs only the NVIDIA
# driver (>= 580 for CUDA 13) and the NVIDIA container toolkit.
#
# STACK_REQUIREMENTS: extra packages for the ZenML stack the image runs on, constrained by the same pins,
# e.g. --build-arg STACK_REQUIREMENTS="$(zenml integration export-requirements kubernetes s3)".
# The images are complete, so ZenML runs them as they are (zenml_config.yaml: install_stack_requirements
# false) instead of building a root-owned layer on top of a non-root image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ZENML_ANALYTICS_OPT_IN=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin replearn

# The replearn wheel alone; both runtime targets install it without dependencies.
FROM base AS wheel
WORKDIR /src
COPY constraints.txt ./
RUN python -m venv /opt/venv && pip install --constraint constraints.txt pip setuptools
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# Every dependency of the project, at the pinned versions. Only pyproject.toml and constraints.txt decide
# this layer, so editing the code does not reinstall torch.
FROM base AS training-deps
ARG STACK_REQUIREMENTS=""
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN python -m venv /opt/venv \
    && pip install --constraint constraints.txt pip setuptools \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > requirements.txt \
    && pip install --constraint constraints.txt --requirement requirements.txt ${STACK_REQUIREMENTS}
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && replearn --help > /dev/null

# What the clustering path imports (replearn.clustering, replearn.embedding.onnx, the CLI) plus zenml for
# its steps; onnxruntime-gpu's cuda/cudnn extras bring the CUDA 13 libraries it loads. No torch.
FROM base AS inference-deps
ARG STACK_REQUIREMENTS=""
WORKDIR /src
COPY constraints.txt ./
RUN python -m venv /opt/venv \
    && pip install --constraint constraints.txt pip setuptools \
    && pip install --constraint constraints.txt \
       numpy scipy pandas pyarrow pillow "onnxruntime-gpu[cuda,cudnn]" faiss-cpu scikit-network pydantic pyyaml typer rich zenml \
       ${STACK_REQUIREMENTS}
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/*.whl \
    && replearn --help > /dev/null \
    && python -c "import replearn.clustering.cluster, replearn.embedding.onnx, sys; assert 'torch' not in sys.modules"

# Runtime targets: the environment is root-owned and read-only for the unprivileged user; /app is its
# working directory (ZenML downloads the pipeline code into /app/code).
FROM base AS training
COPY --from=training-deps /opt/venv /opt/venv
WORKDIR /app
RUN chown replearn:replearn /app
USER replearn
ENTRYPOINT ["replearn"]
CMD ["--help"]

FROM base AS inference
COPY --from=inference-deps /opt/venv /opt/venv
WORKDIR /app
RUN chown replearn:replearn /app
USER replearn
ENTRYPOINT ["replearn"]
CMD ["--help"]
