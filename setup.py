"""Only the optional C part of the package; everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and the row
counter uses its pure-Python loop (slower on large databases, same answers).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cosmic_backup.components.database._chunk_walk",
            ["src/cosmic_backup/components/database/_chunk_walk.c"],
            optional=True,
        ),
        Extension(
            "cosmic_backup.components.database._row_sort",
            ["src/cosmic_backup/components/database/_row_sort.c"],
            optional=True,
        ),
    ]
)
