"""The files stages hand to each other, read and written in one place: threshold.json and the ONNX metadata.

Beside `data` in the layers: every stage may read them, none of them imports a stage.
"""
