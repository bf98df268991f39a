"""The bottom layer: the one error tree, the one subprocess boundary, secrets that never
print, paths, sparse files and test patterns. Imports nothing else of byok."""
