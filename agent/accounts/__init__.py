"""Local accounts: what the platform wants (model), how to get there (reconcile), and
the operating system's side of it (one backend per OS)."""
