"""MLflow tracking of distill-study: the schema of names (``tracking.schema``) and the client
functions (``tracking.client``), shared by ``studies`` (the writer) and ``analysis`` (the reader).
``distill_core`` never imports this package."""
