"""Models: the Keras-style layer list of a pipeline compiled into one PyTorch network.

:mod:`~lstmflow.models.lstm` is the compiler (``build_model``) and the names the rest of lstmflow imports; it
checks :mod:`~lstmflow.models.shapes` and builds :mod:`~lstmflow.models.network` from :mod:`~lstmflow.models.layers`
and :mod:`~lstmflow.models.lstm_block`; :mod:`~lstmflow.models.summary` prints it as Keras would. The lstm layer's
recurrence may run in :mod:`~lstmflow.models.fast_lstm`, whose C++ part :mod:`~lstmflow.models.kernel_build` builds.
"""
