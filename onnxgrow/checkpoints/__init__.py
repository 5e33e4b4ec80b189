"""Checkpoints in, checkpoints out: the grown ONNX back in the format its teacher came in.

    history.py    what every transform did, kept in the ONNX's metadata (roots, lineage, copies)
    keys.py       the teacher's state-dict keys found among the student's initializers
    statedict.py  state dict files (.safetensors, .pt/.pth/.bin): read, write, export
    hf.py         Hugging Face folders: config sizes from the grown graph, shards, write, verify
    hf_grow.py    a folder grown end to end: export with torch's dynamo exporter, grow, write back
    export.py     og.export_checkpoint: a folder or a state dict file, by what the teacher is

Only history.py is imported by the transforms; the rest needs torch and is imported on use.
"""
