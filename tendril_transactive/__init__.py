"""Tendril's one import root, so an installed wheel adds no generic top-level names (`cloud`,
`edge`, `hil`, `dashboards`) to site-packages. In the repository those folders stay at the
root, where a newcomer looks for them; the entries here are symbolic links to them, which
Python, mypy and the wheel build all follow (the wheel holds real copies)."""
