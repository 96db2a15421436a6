"""Task specs: the pydantic schema and loader, YAML with line numbers, gates, studies, the Jinja sandbox and
the check of every doc at load."""
