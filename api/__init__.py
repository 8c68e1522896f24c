"""The FastAPI service: incidents, assets, rules, energy and wellbeing feeds."""
