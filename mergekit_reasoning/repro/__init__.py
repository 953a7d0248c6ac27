"""Reproducible merges: the manifest a merge writes (`manifest`), `verify`,
`regenerate`, content hashes with their cache (`hashing`), and the staging folder
every output is written into before it is renamed into place (`staging`)."""
