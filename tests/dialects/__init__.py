"""The dialects: parsing, rewriting and accounting per API."""
