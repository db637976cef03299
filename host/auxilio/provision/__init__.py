"""Device setup: identity, configuration, the live test and the label (issue 11)."""
