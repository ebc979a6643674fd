"""Ships the repository files plm reads at run time inside the wheel, as ``plm/_shipped/`` (the layout and
the list of directories are plm/paths.py's). Everything else about the package is in pyproject.toml.

An editable install copies nothing: plm.paths finds the files in the checkout itself.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _paths_module():
    """plm/paths.py on its own (standard library only): importing plm here would need its dependencies."""
    spec = importlib.util.spec_from_file_location("_plm_paths", HERE / "plm" / "paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        paths = _paths_module()
        target = Path(self.build_lib) / "plm" / paths.SHIPPED
        shutil.rmtree(target, ignore_errors=True)  # a file deleted from the repository leaves the wheel too
        for rel in paths.SHIPPED_DIRS:
            source = HERE / rel
            if not source.is_dir():
                raise FileNotFoundError(
                    f"{source}: plm.paths.SHIPPED_DIRS names it but it is not here "
                    "(an sdist without it? see MANIFEST.in)"
                )
            shutil.copytree(source, target / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
