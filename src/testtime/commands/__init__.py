"""CLI sub-commands: one module each, exposing ``register(subparsers)``; see ``testtime.cli``."""
