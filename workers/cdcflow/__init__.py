"""cdcflow data plane."""
