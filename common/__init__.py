"""Base helpers shared by ``training``, ``sharding`` and ``orchestrator`` (imports none of them)."""
