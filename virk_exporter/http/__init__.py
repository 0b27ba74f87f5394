"""The HTTP side: the standalone server, its landing page and routes (metrics, health, rebase)."""
