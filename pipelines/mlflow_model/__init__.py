"""READ as an MLflow pyfunc model: its signature and example, the PythonModel, its code file.

The registered model is logged with MLflow's "models from code" (`model_code.py` is the file
MLflow runs to obtain the model), so loading it never unpickles anything; the weights travel as
a model artifact in safetensors and are read by `read_model.checkpoint.load_model_dir`.
"""
