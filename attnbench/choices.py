"""The fixed choices of the command line and the settings, declared once (no imports: every
layer may use them)."""

DEVICES = ("cpu", "cuda")
DTYPE_NAMES = ("float32", "float16", "bfloat16")
MODES = ("fwd", "fwdbwd")
FIT_MODES = ("none", "closed", "distill")
EXECUTORS = ("inline", "process", "ray")
