"""Search spaces and presets, one module each; ``distill-study spaces`` lists them (see docs/studies.md)."""
