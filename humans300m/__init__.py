"""The ``humans300m`` command: one entry point with a subcommand per job and tool."""
