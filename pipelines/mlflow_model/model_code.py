"""The file MLflow runs to get the READ pyfunc model ("models from code": nothing is pickled).

`pipelines.registry.log_and_register` passes this file's path as `python_model`; MLflow copies it
into the model folder and runs it on load, after putting the model's `code/` folder (the
`read_model` and `pipelines` packages as they were at logging time) first on `sys.path`.
"""

import mlflow

from pipelines.mlflow_model.python_model import ReadPythonModel

mlflow.models.set_model(ReadPythonModel())
