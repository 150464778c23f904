"""Jobs app models (filled in by the web-app issue)."""
