"""atheris harnesses of the parsers that read what the network sends (see common.py)."""
