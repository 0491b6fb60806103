"""The operator CLI: the parser, exit codes and output formats, and the commands."""
