"""HTTP blueprints, one per resource; shared request helpers live in :mod:`.common`."""
