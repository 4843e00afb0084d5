"""Embedded tasks (gymnasium ids ``envactor/...``) and their scripted experts."""
