"""The command line, the server, its workers and its lifecycle."""
