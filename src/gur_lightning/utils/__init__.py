"""Small shared utilities (logging, distributed helpers)."""
