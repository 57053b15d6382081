# Load test and benchmark (included from the Makefile: `include loadtest/loadtest.mk`).
# Both need the local stack (`make up`); results go to loadtest/results/ (git-ignored).
#
#   make load  [DURATION=30s USERS=50 SPAWN_RATE=10]   Locust headless + zero-loss check
#   make bench [REPEAT=3 DURATION=20 CONNECTIONS=64 BATCH=1 SCENARIOS=noop,rest,...]
#   make bench-smoke                                    REPEAT=1, 3 s runs (CI-sized)
#   make load-ui [LOCUST_WEB_PORT=8089 LOCUST_ARGS=]    Locust's web UI; you choose the load

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

.PHONY: load load-ui bench bench-smoke

load: up
	$(LOADTEST_PY) -m loadtest.load --duration $(DURATION) --users $(USERS) --spawn-rate $(SPAWN_RATE)

# Interactive: runs until Ctrl-C; the zero-loss check is then yours (GET /stats before/after).
load-ui: up
	@echo "Locust web UI: http://127.0.0.1:$(LOCUST_WEB_PORT)  (target http://127.0.0.1:8000; Ctrl-C stops)"
	.venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \
	  --web-host 127.0.0.1 --web-port $(LOCUST_WEB_PORT) $(LOCUST_ARGS)

bench: up
	$(LOADTEST_PY) -m loadtest.bench --repeat $(REPEAT) --duration $(BENCH_DURATION) \
	  --connections $(CONNECTIONS) --batch $(BATCH) $(BENCH_ARGS)

bench-smoke: up
	$(LOADTEST_PY) -m loadtest.bench --smoke $(BENCH_ARGS)
