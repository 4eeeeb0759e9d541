"""The search: campaigns, steering, shrinking, the example database, stopping, progress, the run command."""
