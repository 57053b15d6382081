# The Ray image of the weather pipeline: the official Ray image of the pinned Ray version
# and Python 3.11, plus this package (serve_app with its generated gRPC stubs in
# serve_app/pb). Used by every Ray pod of kuberay/rayservice.yaml.
#
#   docker build -t weather-pipeline:0.1.0 .
#
# Keep the tag in step with `ray[serve]==...` in pyproject.toml and rayVersion in
# kuberay/rayservice.yaml (tests/unit/test_k8s_manifests.py checks all three).
# RAY_IMAGE stays the official image; `make cluster-test` builds on a local stand-in of it
# (--build-arg RAY_IMAGE=..., see devstack/cluster/images.py) because no registry is reachable.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}

WORKDIR /home/ray/weather-pipeline

# Sources only (see .dockerignore): pyproject.toml, README.md, serve_app (with serve_app/pb),
# proto. No devstack, no loadtest and no locust: `pip install .` installs the runtime
# dependencies and packages serve_app only (load tooling is the `load` extra).
COPY --chown=1000:100 . .

# Checked from / so the installed package (not the sources) must contain the gRPC stubs.
RUN pip install --no-cache-dir . \
 && cd / && python -c "import ray, serve_app.settings, serve_app.store, serve_app.pb.weather.v1.weather_pb2_grpc; assert ray.__version__ == '2.60.0', ray.__version__"

# Run from a neutral directory so Ray imports the installed package, not the sources.
WORKDIR /home/ray
USER 1000
