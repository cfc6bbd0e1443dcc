"""Operations: the steps the Prefect tasks call, the champion gate, DVC versioning and stages, the local stack."""
