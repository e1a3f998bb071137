"""The algorithms: every one by name in algorithms/registry.py; what each offers the loops in algorithms/learner.py."""
