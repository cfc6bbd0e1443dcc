"""Serving: the predictors that turn raw requests into answers, without MLflow.

``predictors`` writes a model's bundle and rebuilds the predictor it holds: ``forecaster``, ``classifier`` or
``generator``, one module each. ``bundle`` names the bundle's files and reads the network back, ``request_checks``
holds the :class:`BadRequest` every predictor raises for a request it cannot answer, ``limits`` the bounds on a
request (size, nesting, rows, tokens) and ``files`` the folders a request's file paths may point into. ``generate``
samples text from a language model; ``predict`` turns ``lstmflow predict``'s command-line inputs into a request.
"""
