"""Reasoning vectors as files: extract, densify and read them (`files`), their
manifest (`manifest`), and the statistics `inspect` shows (`stats`)."""
