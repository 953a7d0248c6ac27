"""The bottom layer: errors, file formats, hashing, staging and provenance.

Nothing here imports mergekit, and nothing imports torch at module level, so
the code that runs before mergekit is imported (read-ahead, the output
reservation) can use it.
"""
