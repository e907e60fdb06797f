"""Small shared utilities: checkpoint I/O, environment records."""
