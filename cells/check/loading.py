"""Loading a learner's file: the class named by FILE.py:CLASS, and errors said as one line with the
learner's line that raised them."""
import importlib
import importlib.util
import inspect
import pathlib
import sys
import traceback

from torch import nn

from .report import NotACell


def load_cell_class(spec):
    """The class named by "FILE.py:CLASS" (or "FILE.py" when the file defines one nn.Module)."""
    path_text, _, name = spec.rpartition(":") if ":" in spec and not spec.endswith(":") else (spec, "", "")
    if len(path_text) == 1 and name.startswith(("\\", "/")):  # a Windows drive, C:\cell.py, not a class
        path_text, name = spec, ""
    path = pathlib.Path(path_text)
    if not path.is_file():
        raise NotACell(f"no file {path_text!r}: give FILE.py:CLASS, e.g. my_lstm.py:MyLSTMCell")
    module = _import_file(path)
    classes = {n: c for n, c in vars(module).items()
               if inspect.isclass(c) and issubclass(c, nn.Module) and c.__module__ == module.__name__}
    if not name:
        if len(classes) != 1:
            found = ", ".join(sorted(classes)) or "none"
            raise NotACell(f"{path} defines {len(classes)} nn.Module classes ({found}); name one: {path}:CLASS")
        return next(iter(classes.values()))
    if not hasattr(module, name):
        found = ", ".join(sorted(classes)) or "no nn.Module classes"
        raise NotACell(f"{path} has no class {name!r}; it defines {found}")
    cls = getattr(module, name)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise NotACell(f"{path}:{name} is a {type(cls).__name__}, not a class deriving from torch.nn.Module")
    return cls


def _import_file(path):
    """Execute the learner's file as a module, with its folder on sys.path for its own imports.

    A file inside a package (cells/lstm.py, with its relative imports) is imported as that package's
    module instead, from the folder above the package."""
    package_module, root = _package_module(path)
    folder = root or str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        if package_module:
            return importlib.import_module(package_module)
        module_name = f"_learner_cell_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look their module up there
        spec.loader.exec_module(module)
        return module
    except BaseException as e:  # noqa: B036 - a SystemExit or KeyboardInterrupt from the file too
        if isinstance(e, KeyboardInterrupt):
            raise
        raise NotACell(f"importing {path} raised {describe_error(e, path)}") from None
    finally:
        sys.path.remove(folder)


def _package_module(path):
    """("cells.lstm", the folder holding cells/) for a file in a package (its folders have __init__.py);
    (None, None) for a file on its own."""
    path = path.resolve()
    parts, folder = [path.stem], path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return (".".join(parts), str(folder)) if len(parts) > 1 else (None, None)


def describe_error(error, path=None):
    """`error` as one line, with the line of the learner's code that raised it."""
    frames = traceback.extract_tb(error.__traceback__)
    mine = [f for f in frames if path is not None and pathlib.Path(f.filename).resolve() == pathlib.Path(path).resolve()]
    if isinstance(error, SyntaxError) and error.lineno:
        return f"SyntaxError: {error.msg} (line {error.lineno}: {(error.text or '').strip()!r})"
    text = f"{type(error).__name__}: {error}".strip()
    frame = mine[-1] if mine else None
    if frame is not None:
        text += f"\n  at {pathlib.Path(frame.filename).name}, line {frame.lineno}: {frame.line}"
    return text


def source_file(cls):
    """The file defining `cls` (None when there is none, e.g. a class made at run time)."""
    try:
        return inspect.getsourcefile(cls)
    except TypeError:
        return None
