"""One module per `farzi-fast` command, each with `run(args) -> exit code`."""
