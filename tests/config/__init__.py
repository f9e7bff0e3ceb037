"""The configuration: schema, validation, loading, rendering."""
