"""The file MLflow logs as the served model's code ("models from code"): it names the pyfunc class.

Logging this file instead of a pickled object keeps the model free of cloudpickle and
loadable by any MLflow that has lstmflow's code (shipped beside it as ``code_paths``).
Only MLflow imports it, when it logs or loads a model.
"""

import mlflow

from lstmflow.tracking.serving import LstmflowModel

mlflow.models.set_model(LstmflowModel())
