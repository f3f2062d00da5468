"""Generic tensor ops used by several models (no model or config knowledge)."""
