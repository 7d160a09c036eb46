"""The MLflow pyfunc model of every vbes family (MLflow's "models from code": this file is logged as the model's
code, the saved model folder as its artifact ``model``; no Python object is pickled).

Input: a table of the family's input columns (``ModelFamily.records_of``); output: the family's answer as a
table (``ModelFamily.predict_records``) -- for the record autoencoder, the reconstructed records.
"""

from __future__ import annotations

from typing import Any

import pandas as pd  # type: ignore[import-untyped]

import mlflow
from mlflow.pyfunc.model import PythonModel

__all__ = ["VbesPyfuncModel"]


class VbesPyfuncModel(PythonModel):
    """Serves a saved vbes model (``vbes.models.load``) as a table-in, table-out pyfunc model."""

    def load_context(self, context: Any) -> None:
        """Load the saved model named by the artifact ``model``.

        Args:
            context: MLflow's context with the artifact paths.
        """
        from vbes.models import load

        self.model = load(context.artifacts["model"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """The model's answer for a table of input rows.

        Args:
            context: MLflow's context (unused).
            model_input: a pandas DataFrame with the input columns.
            params: unused.
        """
        rows = {str(c): model_input[c].to_numpy() for c in model_input.columns}
        return pd.DataFrame(self.model.predict_records(rows))


mlflow.models.set_model(VbesPyfuncModel())
