"""The torch-only code that exported reproducers copy as it is: it imports nothing of shardfuzz (a test checks)."""
