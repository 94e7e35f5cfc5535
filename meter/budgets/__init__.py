"""Budgets: weekly limits per team, user or everything; alerts when spend crosses thresholds."""
