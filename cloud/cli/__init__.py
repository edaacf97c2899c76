"""The `tendril` command: one subcommand per job (main.py loads them from entry points)."""
