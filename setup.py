"""The one build step pyproject.toml cannot declare: the workflow, which lives at the top of the repository
(where ``snakemake`` in a checkout finds it), goes into the wheel as package data under
``cl_ml_tools/workflow/``, keeping its layout so that the rules' relative paths (``../scripts``,
``../../envs``) hold. ``cl_ml_tools.data.workflow`` finds it there, or in the checkout. The same list puts the files
into the sdist, from which the wheel is built.
"""

from glob import glob

from setuptools import setup
from setuptools.command.build_py import build_py

# Relative to the repository root, which is the same place in the packaged tree (cl_ml_tools/workflow/).
WORKFLOW = [
    "Snakefile",
    "config.yaml",
    "workflow/rules/*.smk",
    "workflow/scripts/*.py",
    "workflow/report/*.rst",
    "profiles/*/config.yaml",
    "envs/*.yaml",
]


class BuildWithWorkflow(build_py):
    def _workflow(self) -> tuple[str, str, str, list[str]]:
        # build_py's (package, source folder, build folder, files relative to both) for package data.
        files = sorted(path for pattern in WORKFLOW for path in glob(pattern))
        return "cl_ml_tools", ".", f"{self.build_lib}/cl_ml_tools/workflow", files

    # build_py computes its data files in one of these two (the sdist's manifest uses the second).
    def _get_data_files(self):
        return [*super()._get_data_files(), self._workflow()]

    def get_data_files_without_manifest(self):
        return [*super().get_data_files_without_manifest(), self._workflow()]


setup(cmdclass={"build_py": BuildWithWorkflow})
