"""Who calls: client and admin keys, per-key limits and budgets, and usage."""
