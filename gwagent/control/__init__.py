"""Control: the agent loop, the planner, sources and the registrar.

The planner is pure; sources and registries only read and write inventory;
the agent is the only place where time and I/O meet, and both are injected
so its loop runs deterministically in tests.
"""
