"""What persists between clustering runs: the catalogue's tables, their segments and indexes, and conversion.

Beside `clustering` in the layers: the cluster stage reads and commits it; it imports no stage.
"""
