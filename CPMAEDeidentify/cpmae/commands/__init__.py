"""Sub-commands of ``cpmae``; each module exposes ``register(subparsers)``."""
