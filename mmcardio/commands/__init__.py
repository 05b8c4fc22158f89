"""One module per `mmcardio` subcommand; each exposes `register(subparsers)`."""
