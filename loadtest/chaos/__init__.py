"""The chaos suite: faults under load, on the real local stack, and the promise checked.

    python -m loadtest.chaos [--rounds kafka_kill,...] [--repeat 2]     (or `make chaos`)

Each round: remove what a killed run may have left; set up what the round needs (restored
afterwards, also on failure); wait until nothing is left to drain; start a client that
retries every non-202 with the same ids (loopback only, bounded in requests and time);
inject one fault and undo it; wait (bounded) until both stores have counted what was
accepted. A round passes only when accepted = Redis delta = Valkey delta, the two stores'
breakdowns grew alike, nothing good was dead-lettered (the dead letters grew by exactly the
poison the round sent), no dead letter is left parked, and the fault's own evidence holds.
Results go to loadtest/results/chaos.json and chaos.md.

One module per kind of fault: :mod:`.processes` (kill, freeze, redeploy, alarms),
:mod:`.network` (loopback partitions), :mod:`.disk` (a full filesystem),
:mod:`.retention` (a store outage longer than retention), :mod:`.hostile` (hostile
messages); :mod:`.core` (context, reads, judge) and :mod:`.runner` (rounds, CLI).
"""

from loadtest.chaos.runner import QUICK, ROUNDS, main, markdown, run_round, run_rounds

__all__ = ["QUICK", "ROUNDS", "main", "markdown", "run_round", "run_rounds"]
