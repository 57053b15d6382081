"""The anchor of the benchmark: Benthos v4.27.0 under the same contract, same brokers.

    python -m loadtest.benthos --scenario single --duration 10 [--repeat 3]

``build`` compiles Benthos once into ``.devstack/benthos/bin`` (git-ignored); ``config``
writes its YAML from the project's Settings; ``brokers`` creates, counts and purges the
anchor's own topic and quorum queue; ``process`` runs Benthos as a child on loopback;
``run`` drives it with wrk + ``loadtest/tweets.lua`` exactly as the benchmark drives the
pipeline. The benchmark calls :func:`run_anchor` (or :func:`arun_anchor` from async code).
"""

from loadtest.benthos.run import AnchorResult, Scenario, arun_anchor, run_anchor

__all__ = ["AnchorResult", "Scenario", "arun_anchor", "run_anchor"]
