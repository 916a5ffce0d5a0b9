"""Models other tools derived from a tagged one: ``retag`` puts the tags back, ``optimize`` runs the tools."""
