"""cdcflow operator."""
