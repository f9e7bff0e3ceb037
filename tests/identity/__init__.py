"""Actors, authentication and gateway keys."""
