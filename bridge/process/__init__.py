"""The gateway as a program: the command line, the server and its workers, the demo."""
