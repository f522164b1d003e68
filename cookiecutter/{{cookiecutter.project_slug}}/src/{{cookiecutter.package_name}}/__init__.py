"""{{ cookiecutter.project_name }}: this project's own code.

The machinery (validation, features, training, export, serving, monitoring and the Kedro
pipelines) is the installed ``mlsd`` library, which is also the Kedro package of this project
(``[tool.kedro]`` in pyproject.toml). The problem is ``{{ cookiecutter.problem }}``: its spec is
conf/base/problem.yml and its generator and feature code the module the spec names
(``problem_module``). To change them, put a module here and point the spec at it, e.g.
``problem_module: {{ cookiecutter.package_name }}.problem`` (the three functions of
``mlsd.problems.ProblemModule``), or a model family as
``model.family: "{{ cookiecutter.package_name }}.families:my_family"``.
"""
