"""The lab: simulated plant, meters, sensors and attackers on loopback."""
