"""Code that runs in the rank processes: one case built, trained, saved, rebuilt, loaded and judged."""
