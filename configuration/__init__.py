"""The rules config.py applies: merging YAML files, stored configs, --opts pairs and named flags strictly (merge),
and checking every value (checks)."""
