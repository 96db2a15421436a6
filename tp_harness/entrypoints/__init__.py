"""The two ways in: the ``tp-harness`` command line and the pytest plugin. They may set process-wide
state (environment, logging) for their own process; nothing below them does."""
