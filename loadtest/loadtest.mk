# Load test and benchmark (included from the Makefile: `include loadtest/loadtest.mk`).
# Both need the local stack (`make up`); results go to loadtest/results/ (git-ignored).
#
#   make load  [DURATION=30s USERS=50 SPAWN_RATE=10]   Locust headless + zero-loss check
#   make bench [REPEAT=3 DURATION=20 CONNECTIONS=64 BATCH=1 SCENARIOS=noop,rest,...]
#   make bench-smoke                                    REPEAT=1, 3 s runs (CI-sized)

LOADTEST_PY ?= .venv/bin/python
DURATION    ?= 30s
USERS       ?= 50
SPAWN_RATE  ?= 10
REPEAT      ?= 3
BENCH_DURATION ?= 20
CONNECTIONS ?= 64
BATCH       ?= 1
BENCH_ARGS  ?=

.PHONY: load bench bench-smoke

load: up
	$(LOADTEST_PY) -m loadtest.load --duration $(DURATION) --users $(USERS) --spawn-rate $(SPAWN_RATE)

bench: up
	$(LOADTEST_PY) -m loadtest.bench --repeat $(REPEAT) --duration $(BENCH_DURATION) \
	  --connections $(CONNECTIONS) --batch $(BATCH) $(BENCH_ARGS)

bench-smoke: up
	$(LOADTEST_PY) -m loadtest.bench --smoke $(BENCH_ARGS)
