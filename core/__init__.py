"""Cross-cutting pieces every layer may use: settings, correlation IDs, logging."""
