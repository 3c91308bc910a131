"""The application: recipes, training runs on disk and the ``vmt`` command line.

It sits on top of the other layers and reaches a backend only through the names
every backend exports (`vmt.core.api.PUBLIC_NAMES`).
"""
