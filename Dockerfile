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

# Sources only (see .dockerignore): pyproject.toml, uv.lock, uvlock.py, README.md, serve_app
# (with serve_app/pb), proto. No devstack, no loadtest and no locust.
COPY --chown=1000:100 . .

# Every runtime dependency at the version and hash uv.lock pins (the test and load extras
# and the dev group stay out), then this package's wheel, built by the setuptools version
# the lock has (pyproject's build-constraint-dependencies). uv is the one
# the lock pins, installed by pip with the lock's hashes (uvlock.py) and removed after.
# Checked from / so the installed package (not the sources) must contain the gRPC stubs.
RUN python uvlock.py bootstrap /tmp/uv \
 && export UV_SYSTEM_CERTS=1 \
 && /tmp/uv/bin/uv export --frozen --no-dev --no-emit-project --format requirements.txt \
      --output-file /tmp/requirements.txt --quiet \
 && /tmp/uv/bin/uv pip install --no-cache --python "$(command -v python)" \
      --require-hashes -r /tmp/requirements.txt \
 && /tmp/uv/bin/uv build --wheel --out-dir /tmp/dist --quiet \
 && /tmp/uv/bin/uv pip install --no-cache --python "$(command -v python)" --no-deps /tmp/dist/*.whl \
 && rm -rf /tmp/uv /tmp/dist /tmp/requirements.txt build *.egg-info \
 && cd / && python -c "import ray, serve_app.settings, serve_app.store, serve_app.pb.weather.v1.weather_pb2_grpc; assert ray.__version__ == '2.60.0', ray.__version__" \
 && python -m serve_app.ingest.edge install

# The last step above gives Ray's HAProxy template the Gateway's limits (EDGE_* in
# ray-env.yaml): per-server maxconn, a queue timeout, a JSON 503 + Retry-After
# (serve_app/ingest/edge.py; it fails the build if this Ray's template does not fit).

# Run from a neutral directory so Ray imports the installed package, not the sources.
WORKDIR /home/ray
USER 1000
