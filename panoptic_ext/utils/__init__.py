"""Helpers every layer may use: config-adder plumbing, seeding, the meta-architecture table."""
