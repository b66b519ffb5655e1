"""Command-line interface: one module per command group; each parses, calls the library and renders."""
