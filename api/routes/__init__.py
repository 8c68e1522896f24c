"""One router per resource: auth, incidents, alerts, assets, rules, audit, health."""
