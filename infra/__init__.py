"""Adapters to the outside world, each behind a small interface: Host, ArtifactStore, the agent."""
