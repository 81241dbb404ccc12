"""Command-line adapters: each module parses arguments and forwards to the core library."""
