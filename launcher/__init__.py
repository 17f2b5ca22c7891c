"""The user's side: CLI, config, orchestration, the live view. Knows the lifecycle, not AWS or SSH."""
