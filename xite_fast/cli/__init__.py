"""The ``xite-fast`` command line: each subcommand parses, calls one library function, prints."""
