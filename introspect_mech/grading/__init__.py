"""Graders."""
