"""Run directories on disk: the append-only journal (resume) and reading stored runs."""
