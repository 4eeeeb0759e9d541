"""The commands of ``shardfuzz``: one module each; ``cli`` parses and dispatches to them."""
