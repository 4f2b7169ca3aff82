"""Deployment exports of trained runs (``latentvla export``)."""
