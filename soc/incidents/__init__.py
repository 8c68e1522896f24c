"""Incidents: alerts correlated (correlate), their workflow and audit (service), notifications (notify)."""
