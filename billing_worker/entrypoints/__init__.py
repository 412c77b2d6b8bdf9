"""The command line and the process lifecycle."""
