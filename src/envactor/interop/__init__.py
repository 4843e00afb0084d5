"""Bridges to other robot-learning libraries; each imports its library only when it is used."""
