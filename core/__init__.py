"""The bottom layer: errors, run state, config schema and settings that every other layer imports.

It imports none of ``launcher/``, ``infra/`` or ``trainer/`` (tests/unit/test_layers.py checks it).

    from core.errors import ConfigError
"""
