"""Tendril's Grafana dashboards as code: definitions, JSON export, checks."""
