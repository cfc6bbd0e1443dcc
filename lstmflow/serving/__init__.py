"""Serving: predictors that turn raw inputs into answers (no MLflow), predict and generate."""
