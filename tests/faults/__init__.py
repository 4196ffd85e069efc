"""Fault injection: the runner under a seeded mix of every fault the simulator and the test receiver can produce.

``mix.py`` turns a seed into a simulator script (each call a random subset of the faults), ``harness.py`` runs the
real runner over it with recording, slow and raising plugins and the webhook plugin delivering to a failing
receiver, and ``invariants.py`` holds the run to what a user is promised: every event the simulator sent reaches
every plugin once, in order, or its loss is counted; the runner ends normally; every webhook message is received or
dead-lettered. ``benchmarks/bench_faults.py`` runs the same over many seeds.
"""
