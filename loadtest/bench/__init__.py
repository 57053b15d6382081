"""The benchmark: one command, one run, one machine, every figure side by side.

    python -m loadtest.bench [--repeat 3] [--duration 20] [--smoke]   (or `make bench`)

Scenarios (each repeated ``--repeat`` times; the tables show medians):

* ``noop``: wrk + tweets.lua against a no-op Serve app (``/noop``) deployed next to the
  pipeline: the ceiling of Serve's HTTP path on this machine.
* ``noop_grpc``: the gRPC client against the same no-op app's ``Publish`` (metadata
  ``application: noop``): the ceiling of Serve's gRPC path.
* ``rest``: the same wrk load against ``POST /input``; end-to-end tweets/s = accepted
  tweets / (first request -> last accepted tweet counted in Redis AND Valkey).
* ``benthos``: the anchor, Benthos v4.27 (loadtest/benthos) under the same contract on
  the same brokers, the same wrk load; every accepted tweet verified in both brokers.
* ``stream``: single tweets as frames on the WebSocket ``/input/stream`` (wsload).
* ``rest_half``: wrk paced open-loop at half the measured ``rest`` rate: accept latency,
  freshness and CPU per tweet at a sustainable rate.
* ``rest_batch``: wrk posting arrays of ``--big-batch`` (100) tweets.
* ``benthos_batch``: the anchor with arrays of 100 tweets.
* ``grpc``: a multi-process grpc.aio client calling ``Publish`` through port 9000.
* ``grpc_batch``: the same client calling ``PublishBatch`` with ``--big-batch`` tweets.
* ``replicas_1`` / ``replicas_2`` / ``replicas_auto``: the Gateway fixed at 1, at 2, and
  autoscaling; replica counts over time from the dashboard's Serve REST API.
* ``drain``: arrays of ``--big-batch`` tweets accepted while both stores hold their writes
  (``CLIENT PAUSE WRITE``), then released: each consumer's own drain rate (Kafka -> Redis,
  RabbitMQ -> Valkey) with the machine to itself.
* ``overload`` (last; not in ``--smoke``): an open-loop generator (openloop) at 2 x the
  measured max single-tweet rate, then half of it: 503 share, latencies, recovery, every
  stack process's RSS before and after, every tweet answered 202 looked for by id.

A freshness probe (low-rate tagged tweets polled in both stores) runs during every
pipeline run; the stack's CPU per accepted tweet (procs) is measured in each. Results go
to ``loadtest/results/bench.json`` and ``bench.md``.
``serve_config.yaml`` is deployed again at the end, whatever happened.
"""

# Layout: scenarios (one entry per scenario; a new one is one entry there), drivers (wrk,
# gRPC, WebSocket, open loop, Benthos; a new load generator is one function there), wsload
# and openloop (the Python load processes), procs (the stack's processes: CPU, RSS),
# measure (CPU, totals, freshness, replicas), report (tables, targets, JSON), runner (the
# runs), cli (flags, entry point).
