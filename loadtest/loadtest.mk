# Load test and benchmark (included from the Makefile: `include loadtest/loadtest.mk`).
# Both need the local stack (`make up`); results go to loadtest/results/ (git-ignored).
#
#   make load  [DURATION=30s USERS=50 SPAWN_RATE=10]   Locust headless + zero-loss check
#   make bench [REPEAT=3 BENCH_DURATION=20 SCENARIOS=noop,rest,... BENCH_ARGS=...]
#   make bench-smoke                                    REPEAT=1, 3 s runs (CI-sized)
#   make benthos-build                                  Benthos v4.27 for the anchor (cached)
#   make soak [SOAK_MINUTES=60]                         half the max rate, dashboard open
#   make load-ui [LOCUST_WEB_PORT=8089 LOCUST_ARGS=]    Locust's web UI; you choose the load
#   make chaos [CHAOS_ROUNDS=a,b CHAOS_REPEAT=2]        fault rounds under load, both stores checked
#   make verify                                         Redis and Valkey compared key by key

LOADTEST_PY ?= .venv/bin/python
DURATION    ?= 30s
USERS       ?= 50
SPAWN_RATE  ?= 10
REPEAT      ?= 3
BENCH_DURATION ?= 20
CONNECTIONS ?= 64
BATCH       ?= 1
BENCH_ARGS  ?=
LOCUST_WEB_PORT ?= 8089
LOCUST_ARGS ?=
SOAK_MINUTES ?= 60

.PHONY: load load-ui bench bench-smoke benthos-build soak verify chaos

load: up  ## Locust headless for DURATION with USERS, then the zero-loss check
	$(LOADTEST_PY) -m loadtest.load --duration $(DURATION) --users $(USERS) --spawn-rate $(SPAWN_RATE)

# Interactive: runs until Ctrl-C; the zero-loss check is then yours (GET /stats before/after).
load-ui: up  ## Locust's web UI against the local stack
	@echo "Locust web UI: http://127.0.0.1:$(LOCUST_WEB_PORT)  (target http://127.0.0.1:8000; Ctrl-C stops)"
	.venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \
	  --web-host 127.0.0.1 --web-port $(LOCUST_WEB_PORT) $(LOCUST_ARGS)

# The anchor's binary, built once (minutes, cold) before any timed step, then cached in
# .devstack/benthos/bin; bench-smoke runs the anchor only when it is already built.
benthos-build: venv  ## Build Benthos v4.27, the benchmark's anchor (cached)
	$(LOADTEST_PY) -m loadtest.benthos --build-only

bench: up benthos-build  ## The benchmark: every scenario, ours beside Benthos, ratios in one run
	$(LOADTEST_PY) -m loadtest.bench --repeat $(REPEAT) --duration $(BENCH_DURATION) \
	  --connections $(CONNECTIONS) --batch $(BATCH) $(BENCH_ARGS)

bench-smoke: up  ## The benchmark's short form (CI-sized)
	$(LOADTEST_PY) -m loadtest.bench --smoke $(BENCH_ARGS)

# Not in CI: an hour at half the max rate; loadtest/results/soak.json and soak.png.
soak: up  ## An hour at half the max rate (SOAK_MINUTES)
	$(LOADTEST_PY) -m loadtest.soak --minutes $(SOAK_MINUTES)

# Redis and Valkey compared key by key (exit 1 naming each difference); waits for a drain.
verify: venv  ## Compare Redis and Valkey key by key
	$(LOADTEST_PY) -m loadtest.verify --wait 60

# Every fault round twice under a retrying load; results in loadtest/results/chaos.json.
CHAOS_ROUNDS ?=
CHAOS_REPEAT ?= 2
chaos: up  ## Every fault round under load, twice (CHAOS_ROUNDS, CHAOS_REPEAT)
	$(LOADTEST_PY) -m loadtest.chaos --repeat $(CHAOS_REPEAT) $(if $(CHAOS_ROUNDS),--rounds $(CHAOS_ROUNDS))
