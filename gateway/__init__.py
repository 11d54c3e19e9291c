"""The data plane: one process tree per gateway identity, routing /r1 calls locally or over one mesh hop."""
