"""The command-line face: parsing, prompts, tables, JSON and progress. No logic of its own."""
