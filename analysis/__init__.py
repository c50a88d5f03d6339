"""Look at a finished study: read it back from MLflow, plot it, report it, export its best configs.

Modules: ``study`` (MLflow -> pandas, seed groups), ``plots``, ``report``, ``export``, ``ui``
(the MLflow server), ``cli`` (``distill-study report | export | ui``). Nothing is imported here,
so that the CLI starts without pandas, matplotlib and Optuna.
"""
