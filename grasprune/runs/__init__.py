"""Runs: run folders, the prune pipeline, jobs, events' timeline, progress, archives, estimates."""
