"""The commands of ``shardfuzz``: one module each, with a ``main(args)``; ``cli`` parses and dispatches to them.

A command imports torch and the rest of the package inside its ``main``, so ``shardfuzz --help`` starts fast."""
