"""``explorer.model_files``: kept at this path for scripts; the module is ``explorer/frontend/model_files.py``."""
from .frontend.model_files import ModelFileError, load_module, load_program, parse_overrides, program_fn

__all__ = ["ModelFileError", "load_module", "load_program", "parse_overrides", "program_fn"]
