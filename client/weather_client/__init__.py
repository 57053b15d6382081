"""Reference client of the weather-tweet pipeline (importable without Ray)."""
